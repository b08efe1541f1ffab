"""Crosscoder and trainer configs (dataclasses on the one featalign config system)."""

from __future__ import annotations

from dataclasses import dataclass

from featalign.config import JsonConfig

#: Bumped whenever the checkpoint / saved-crosscoder layout changes; newer files are refused.
FORMAT_VERSION = 1

VARIANTS = ("l1", "batchtopk", "jumprelu")


@dataclass
class CrosscoderConfig(JsonConfig):
    """Shape and sparsity mechanism of an N-model crosscoder.

    Input is `[B, n_models, n_hooks, d_model]` raw activations; the encoder is shared over the
    concatenation, each (model, hook) has its own decoder.
    """

    models: tuple[str, ...] = ("base", "rl", "sft")
    hooks: tuple[str, ...] = ("blocks.1.hook_resid_post",)
    d_model: int = 128
    n_latents: int = 2048
    # "l1" (ReLU + decoder-norm-weighted L1; default: meets the quality targets on the organisms with
    # ~1% dead latents), "batchtopk" (fewer spurious model-specific latents, Minder et al.), "jumprelu"
    variant: str = "l1"
    # batchtopk: mean number of active latents per token; selection is over the whole batch
    k: int = 32
    sparse_decode: bool = True  # batchtopk: embedding_bag decode + backward through active latents only
    threshold_ema: float = 0.01  # batchtopk: EMA rate of the inference threshold
    aux_k: int = 256  # batchtopk: latents per token used by the dead-latent auxiliary loss
    aux_coef: float = 1.0  # sae_lens's default; the loss is scaled by min(n_dead / aux_k, 1)
    # l1: designated shared latents (the first n_shared) get their penalty scaled by shared_penalty
    n_shared: int = 0
    shared_penalty: float = 0.15
    # jumprelu: straight-through threshold estimator
    jumprelu_init_threshold: float = 1.0  # normalised space (mean input norm sqrt(d_model))
    jumprelu_bandwidth: float = 0.2
    # init: decoder rows of norm dec_init_norm per (model, hook); encoder = decoder transpose
    dec_init_norm: float = 0.1
    dead_tokens: int = 200_000  # a latent that has not fired for this many tokens is dead
    seed: int = 0

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        self.hooks = tuple(self.hooks)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if not self.models or not self.hooks:
            raise ValueError("name at least one model and one hook (e.g. models=('base','rl'))")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"model names must be unique, got {self.models}")
        for name in ("d_model", "n_latents", "dead_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.n_shared <= self.n_latents:
            raise ValueError(f"n_shared={self.n_shared} must be in 0..n_latents={self.n_latents}")
        if self.variant == "batchtopk" and not 0 < self.k <= self.n_latents:
            raise ValueError(f"k={self.k} must be in 1..n_latents={self.n_latents}")

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


@dataclass
class TrainerConfig(JsonConfig):
    """Optimisation schedule (Anthropic-style: Adam, lr warmup + final linear decay, L1 warmup)."""

    steps: int = 2000  # the default organisms run (caching included) fits in ~10 min on 2 CPU cores
    batch_size: int = 2048  # global batch (split across DDP ranks)
    lr: float = 1e-3
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    decay_frac: float = 0.2  # lr decays linearly to 0 over the last decay_frac of the steps
    sparsity_coef: float = 1.0  # l1: penalty weight; jumprelu: L0 weight (~0.3); unused by batchtopk
    sparsity_warmup_frac: float = 0.05  # linear warmup of the sparsity coefficient
    grad_clip: float = 1.0
    bf16: bool = False  # bf16 autocast for the forward/backward matmuls
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    norm_batches: int = 8  # batches used to estimate normalisation scalars when the source has none
    resample_every: int = 0  # resample dead latents every N steps (0: never) ...
    resample_until: float = 0.6  # ... during the first resample_until fraction of the steps

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "norm_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "warmup_steps", "sparsity_coef", "grad_clip", "resample_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.decay_frac <= 1:
            raise ValueError(f"decay_frac must be in [0, 1], got {self.decay_frac}")


#: Trainer fields that may change between a run and its resume (they do not affect the result).
RESUMABLE_CHANGES = ("log_every", "checkpoint_every")
