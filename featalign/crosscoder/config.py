"""Crosscoder and trainer configs (dataclasses on the one featalign config system).

Every field carries its help text as metadata (`help_field`), which is what the CLI prints, so a new
field cannot be added without one. The variant's own fields live in its config class
(`featalign.crosscoder.variants.<name>`), nested here as `variant_cfg`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, cast

from featalign.config import JsonConfig
from featalign.crosscoder.variants import VariantConfig, help_field, variant_class

#: Bumped whenever the checkpoint / saved-crosscoder layout changes; newer files are refused, older ones
#: migrated (`migrate_config`, `migrate_state_dict`). 2: variant fields nested in `variant_cfg`, variant
#: state under `variant.` in the state dict.
FORMAT_VERSION = 2


@dataclass
class CrosscoderConfig(JsonConfig):
    """Shape and sparsity mechanism of an N-model crosscoder.

    Input is `[B, n_models, n_hooks, d_model]` raw activations; the encoder is shared over the
    concatenation, each (model, hook) has its own decoder.
    """

    models: tuple[str, ...] = help_field(("base", "rl", "sft"), "model names, in the order of the activation source")
    hooks: tuple[str, ...] = help_field(("blocks.1.hook_resid_post",), "hook points")
    d_model: int = help_field(128, "activation width")
    n_latents: int = help_field(2048, "number of crosscoder latents")
    # l1 is the default: it meets the quality targets on the organisms with ~1% dead latents
    variant: str = help_field("l1", "sparsity mechanism, a registered variant name")
    variant_cfg: Any = help_field(None, "the variant's own fields (its config dataclass, or a dict of them)")
    dec_init_norm: float = help_field(0.1, "initial decoder norm per (model, hook) block (encoder = decoder transpose)")
    dead_tokens: int = help_field(200_000, "a latent that has not fired for this many tokens counts as dead")
    seed: int = help_field(0, "seed of the crosscoder initialisation")

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        self.hooks = tuple(self.hooks)
        cls = variant_class(self.variant)
        v = self.variant_cfg
        if v is None:
            v = cls.Config()
        elif isinstance(v, dict):
            v = cls.Config.from_dict(v)
        elif type(v) is not cls.Config:
            raise ValueError(f"variant {self.variant!r} takes a {cls.Config.__name__}, got {type(v).__name__}")
        self.variant_cfg = v
        if not self.models or not self.hooks:
            raise ValueError("name at least one model and one hook (e.g. models=('base','rl'))")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"model names must be unique, got {self.models}")
        for name in ("d_model", "n_latents", "dead_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        v.validate(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CrosscoderConfig:
        """As `JsonConfig.from_dict`; fields of the chosen variant may also be given at the top level
        (`{"variant": "batchtopk", "k": 32}`), they are moved into `variant_cfg`."""
        d = dict(d)
        own = {f.name for f in dataclasses.fields(cls)}
        vfields = {f.name for f in dataclasses.fields(variant_class(d.get("variant", cls.variant)).Config)}
        flat = {k: d.pop(k) for k in list(d) if k not in own and k in vfields}
        if flat:
            vc = d.get("variant_cfg")
            vc = dataclasses.asdict(vc) if isinstance(vc, VariantConfig) else dict(vc or {})
            d["variant_cfg"] = {**flat, **vc}
        return super().from_dict(d)

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def n_hooks(self) -> int:
        return len(self.hooks)

    @property
    def d_in(self) -> int:
        """Width of the concatenated input, n_models * n_hooks * d_model."""
        return self.n_models * self.n_hooks * self.d_model


#: format 1 kept every variant's fields at the top level under these names (all of them in every file)
_V1_FIELDS = {
    "l1": {"n_shared": "n_shared", "shared_penalty": "shared_penalty"},
    "batchtopk": {k: k for k in ("k", "sparse_decode", "threshold_ema", "aux_k", "aux_coef")},
    "jumprelu": {"jumprelu_init_threshold": "init_threshold", "jumprelu_bandwidth": "bandwidth"},
}
_V1_STATE = {
    "l1": {"penalty": "variant.penalty"},
    "batchtopk": {"threshold": "variant.threshold"},
    "jumprelu": {"log_threshold": "variant.log_threshold"},
}


def migrate_config(d: dict[str, Any], version: int) -> dict[str, Any]:
    """A saved crosscoder config dict of `version` in the current layout (format 1: flat variant fields)."""
    if version >= 2:
        return d
    d = dict(d)
    names = _V1_FIELDS.get(d.get("variant", "l1"), {})
    nested = {}
    for fields in _V1_FIELDS.values():
        for old in fields:
            if old in d:
                v = d.pop(old)
                if old in names:
                    nested[names[old]] = v
    if d.get("variant", "l1") == "batchtopk":  # format 1 trained its aux loss on dead latents only
        nested.setdefault("aux_dead_tokens", 0)
    d["variant_cfg"] = nested
    return d


def migrate_state_dict(state: dict, variant: str, version: int) -> dict:
    """A crosscoder state dict of `version` with the current keys (format 1: variant state at the top
    level, and `penalty` / `threshold` buffers in every variant)."""
    if version >= 2:
        return state
    keep = _V1_STATE.get(variant, {})
    drop = {k for m in _V1_STATE.values() for k in m} - set(keep)
    return {keep.get(k, k): v for k, v in state.items() if k not in drop}


@dataclass
class TrainerConfig(JsonConfig):
    """Optimisation schedule (Anthropic-style: Adam, lr warmup + final linear decay, sparsity warmup)."""

    steps: int = help_field(2000, "training steps")  # the default organisms run (caching included) fits on 2 CPU cores
    batch_size: int = help_field(2048, "global batch size in tokens (split across DDP ranks)")
    lr: float = help_field(1e-3, "peak Adam learning rate")
    adam_betas: tuple[float, float] = help_field((0.9, 0.999), "Adam betas")
    warmup_steps: float = help_field(
        100, "linear lr warmup: a number of steps (>= 1), or a fraction of the steps (< 1)"
    )
    decay_frac: float = help_field(0.2, "lr decays linearly to 0 over this final fraction of the steps")
    # 1.0, not the 2 of arXiv 2604.25011: on the organisms 2.0 doubles the FVU and quintuples the dead
    # latents at the same budget (docs/crosscoder.md, "Quality on the organisms")
    sparsity_coef: float = help_field(1.0, "l1: penalty weight; jumprelu: L0 weight (~0.3); unused by batchtopk")
    sparsity_warmup_frac: float = help_field(0.05, "fraction of steps over which the sparsity coefficient warms up")
    grad_clip: float = help_field(1.0, "max gradient norm (0 disables clipping)")
    bf16: bool = help_field(False, "bf16 autocast for the matmuls")
    seed: int = help_field(0, "seed of the data order and of resampling")
    checkpoint_every: int = help_field(500, "write a resumable checkpoint every N steps (0 = only at the end)")
    log_every: int = help_field(50, "log metrics every N steps (0 = only the last step)")
    norm_batches: int = help_field(8, "batches used to estimate normalisation scalars when the source has none")
    resample_every: int = help_field(
        0, "resample dead latents toward badly reconstructed tokens every N steps (0 = never)"
    )
    resample_until: float = help_field(0.6, "only resample during this first fraction of the steps")

    def __post_init__(self) -> None:
        self.adam_betas = cast("tuple[float, float]", tuple(self.adam_betas))  # a JSON list -> the tuple
        for name in ("steps", "batch_size", "norm_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "warmup_steps", "sparsity_coef", "grad_clip", "resample_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.decay_frac <= 1:
            raise ValueError(f"decay_frac must be in [0, 1], got {self.decay_frac}")
        if self.warmup_steps < 0 or (self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps)):
            raise ValueError(
                f"warmup_steps must be a whole number of steps >= 1 or a fraction in [0, 1), got {self.warmup_steps}"
            )
        for name in ("checkpoint_every", "log_every", "resample_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = never / only at the end), got {getattr(self, name)}")

    @property
    def warmup(self) -> int:
        """Warmup length in steps (a fraction of `steps` when `warmup_steps` < 1)."""
        w = self.warmup_steps
        return int(w) if w >= 1 else round(w * self.steps)


#: Trainer fields that may change between a run and its resume (they do not affect the result).
RESUMABLE_CHANGES = ("log_every", "checkpoint_every")
