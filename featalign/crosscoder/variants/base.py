"""What a crosscoder variant is: its config, its state, its activation (the inference rule) and its
training forward; and the one registry that maps a name to it.

A variant is an `nn.Module` held by the `Crosscoder` as `crosscoder.variant`, so its parameters and
buffers (a learned threshold, an EMA statistic, a penalty vector) live in the crosscoder's state dict
under `variant.` and travel with checkpoints. The crosscoder owns what every variant shares (encoder,
decoders, normalisation, dead-latent tracking); the trainer, the CLI and the interventions see only
this interface, so adding a variant is one file plus its registration (see `variants/__init__.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from featalign.config import JsonConfig

if TYPE_CHECKING:  # the crosscoder imports this module; the reverse is only for annotations
    from featalign.crosscoder.config import CrosscoderConfig
    from featalign.crosscoder.model import Crosscoder


def help_field(default: Any, help: str, **kw) -> Any:
    """A dataclass field whose `help` metadata is what the CLI prints for its flag."""
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class VariantConfig(JsonConfig):
    """Fields of one variant (subclasses add theirs with `help_field`)."""

    def validate(self, cc: CrosscoderConfig) -> None:
        """Checks that need the crosscoder's shape (e.g. k <= n_latents); raise ValueError naming the fix."""


@dataclass
class TrainOutput:
    """What one training forward pass returns (all in normalised space)."""

    loss: Tensor
    parts: dict[str, Tensor]  # loss parts, detached scalars for logging
    x_hat_BK: Tensor
    # bool [L]: latent fired at least once in this batch; a callable when it is cheaper to compute late
    fired_L: Tensor | Callable[[], Tensor]
    l0: Tensor | Callable[[], Tensor]  # mean active latents per token
    # scalars the variant's `update` consumes after the optimizer step; averaged across DDP ranks
    # (NaN = "no value on this rank"), so each must be a mean-able statistic
    stats: dict[str, Tensor] = field(default_factory=dict)


class Scratch:
    """Tensors a variant's training step keeps between steps (not model state): `Variant.scratch`.

    A fresh large tensor costs page faults on first touch, several times the cost of refilling a kept one,
    for every such tensor of every step (docs/crosscoder.md, Performance). Buffers are lent to one step at
    a time (`take`) and handed back when it is done with them (`give`); a step that finds them lent (two
    forwards before a backward) allocates its own. The L1 step stamps its lendings, so a use of stale
    buffers raises instead of reading overwritten memory (`variants/l1.py`).
    """

    def __init__(self) -> None:
        self._free: dict = {}

    def take(self, key, make: Callable[[], dict]) -> dict:
        bufs = self._free.pop(key, None)
        return make() if bufs is None else bufs

    def give(self, key, bufs: dict) -> None:
        if key not in self._free and len(self._free) >= 4:  # a few shapes at most (e.g. a short last batch)
            self._free.pop(next(iter(self._free)))
        self._free[key] = bufs

    def __deepcopy__(self, memo) -> Scratch:
        return Scratch()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state) -> None:
        self._free = {}


class Variant(nn.Module):
    """One sparsity mechanism. Subclasses set `name` and `Config` and implement `activation` and
    `training_forward`; `update`, `log_row` and `resample_encoder_scale` have defaults."""

    name: ClassVar[str]
    Config: ClassVar[type[VariantConfig]]
    #: encoder norm of a resampled latent relative to the mean alive one: small for ReLU-type variants (a
    #: fresh latent should not dominate), 1 where a latent must win a top-k competition to learn at all
    resample_encoder_scale: ClassVar[float] = 0.2
    #: this variant's config; each subclass re-annotates it with its own `Config` type
    cfg: VariantConfig

    def __init__(self, cc_cfg: CrosscoderConfig, cfg: VariantConfig):
        super().__init__()
        self.cfg = cfg
        self.n_latents = cc_cfg.n_latents
        self.scratch = Scratch()

    def _apply(self, *args, **kwargs):  # .to() / .float() / ...: drop the scratch of the old device or dtype
        self.scratch = Scratch()
        return super()._apply(*args, **kwargs)

    def activation_for(self, cc: Crosscoder, latents: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        """Inference rule: a function from pre-activations `x W_enc + b_enc` `[B, S]` to latent activations,
        per token and per latent (never depending on the batch), for all latents or for the ids `latents`
        (the columns of its input). Whatever it needs from the crosscoder (a threshold, decoder norms) is
        read once here, so a hook that encodes on every forward call does not recompute it."""
        raise NotImplementedError

    def jumprelu_threshold(self, cc: Crosscoder) -> Tensor | None:
        """The inference rule in the form sae_lens can load (`featalign.crosscoder.export`): None if it is
        `relu(pre)`, else the per-latent threshold θ [L] of `relu(pre) · H(pre − θ)` (sae_lens' JumpReLU).
        A variant whose rule has neither form leaves this unimplemented and cannot be exported."""
        raise NotImplementedError(
            f"variant {self.name!r} has no sae_lens form of its inference rule "
            "(implement jumprelu_threshold to export it)"
        )

    def activation(self, cc: Crosscoder, pre_BS: Tensor, latents: Tensor | None = None) -> Tensor:
        """`activation_for(cc, latents)(pre_BS)`."""
        return self.activation_for(cc, latents)(pre_BS)

    def training_forward(self, cc: Crosscoder, x_BK: Tensor, sparsity_coef: float) -> TrainOutput:
        """Loss on normalised input `[B, K]`: summed squared error per token (mean over tokens) plus the
        variant's sparsity / auxiliary terms."""
        raise NotImplementedError

    @torch.no_grad()
    def update(self, stats: dict[str, Tensor]) -> None:
        """After each optimizer step, with `TrainOutput.stats` averaged across ranks."""

    def log_row(self) -> dict[str, float]:
        """Extra numbers for the metrics log (e.g. an inference threshold)."""
        return {}


#: name -> variant class; filled by `register` (see `variants/__init__.py` for the list)
REGISTRY: dict[str, type[Variant]] = {}


def register(cls: type[Variant]) -> type[Variant]:
    """Class decorator: make `cls` available as `CrosscoderConfig(variant=cls.name)`."""
    if not (isinstance(getattr(cls, "name", None), str) and dataclasses.is_dataclass(getattr(cls, "Config", None))):
        raise TypeError(f"{cls.__name__} needs a `name` and a dataclass `Config`")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"variant {cls.name!r} is already registered by {REGISTRY[cls.name].__name__}")
    REGISTRY[cls.name] = cls
    return cls


def variant_class(name: str) -> type[Variant]:
    """The registered variant called `name`, or a ValueError listing the registered names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"variant must be one of {tuple(REGISTRY)}, got {name!r}") from None


def has_field(variant: str, name: str) -> bool:
    """Whether the variant's config has a field `name` (for callers that set e.g. `k` only where it exists)."""
    return name in {f.name for f in dataclasses.fields(variant_class(variant).Config)}


def field_help(f: dataclasses.Field) -> str:
    """A field's help text: its `help` metadata (every config field of featalign's crosscoder has one)."""
    return f.metadata.get("help", "")
