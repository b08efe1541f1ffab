"""The N-model crosscoder: one shared encoder over `[M, H, d]`, one decoder per (model, hook).

Notation: B batch, M models, H hooks, D d_model, K = M*H*D (concatenated input), L latents.
Training works in *normalised* space (each (model, hook) block scaled so that E||x|| = sqrt(D),
as in Anthropic's crosscoder); `norm_scale` [M, H] lives in the checkpoint so the public
`encode`/`encode_as`/`decode`/`forward` take raw activations and return raw activations.
The sparsity mechanism is a plug-in (`featalign.crosscoder.variants`), held as `self.variant`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import Tensor, nn

from featalign.crosscoder.config import FORMAT_VERSION, CrosscoderConfig, migrate_config, migrate_state_dict
from featalign.crosscoder.variants import TrainOutput, Variant, variant_class
from featalign.io import atomic_write_bytes, atomic_write_json, provenance, read_json

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "crosscoder.safetensors"

__all__ = [
    "CFG_FILE",
    "WEIGHTS_FILE",
    "Crosscoder",
    "TrainOutput",
    "check_format_version",
    "read_config",
    "write_config",
]


class Crosscoder(nn.Module):
    """Shared encoder over the concatenated `[M, H, D]` input, one decoder block per (model, hook).

    Parameters (SAELens layout): `W_enc` [K, L], `b_enc` [L], `W_dec` [L, K] (view as
    [L, M, H, D] with `W_dec_LMHD`; in raw activation space `W_dec_raw_LMHD`), `b_dec` [K].
    Buffers: `norm_scale` [M, H], `tokens_since_fired` [L] (dead-latent tracking). The variant's own
    parameters and buffers are under `variant.` (e.g. `variant.threshold` for batchtopk).
    """

    variant: Variant
    norm_scale: Tensor  # buffer [M, H]
    tokens_since_fired: Tensor  # buffer [L], int64

    def __init__(self, cfg: CrosscoderConfig):
        super().__init__()
        self.cfg = cfg
        M, H, D, L, K = cfg.n_models, cfg.n_hooks, cfg.d_model, cfg.n_latents, cfg.d_in
        g = torch.Generator().manual_seed(cfg.seed)
        W_dec_LND = torch.randn(L, M * H, D, generator=g)
        W_dec_LND *= cfg.dec_init_norm / W_dec_LND.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec_LND.reshape(L, K).contiguous())
        self.W_enc = nn.Parameter(self.W_dec.data.t().contiguous())  # encoder init = decoder transpose
        self.b_enc = nn.Parameter(torch.zeros(L))
        self.b_dec = nn.Parameter(torch.zeros(K))
        self.register_buffer("norm_scale", torch.ones(M, H))
        self.register_buffer("tokens_since_fired", torch.zeros(L, dtype=torch.int64))
        self.variant = variant_class(cfg.variant)(cfg, cfg.variant_cfg)

    # --- shapes and norms ---------------------------------------------------------------------

    @property
    def W_dec_LMHD(self) -> Float[Tensor, "L M H D"]:
        """The decoder in normalised space (what training and attribution read)."""
        c = self.cfg
        return self.W_dec.view(c.n_latents, c.n_models, c.n_hooks, c.d_model)

    @property
    def W_dec_raw_LMHD(self) -> Float[Tensor, "L M H D"]:
        """The decoder in raw activation space: latent l at activation 1 adds `W_dec_raw_LMHD[l, m, h]`
        to model m's activation at hook h (`decode(f) - decode(0)`, row by row)."""
        return self.W_dec_LMHD / self.norm_scale[None, :, :, None]

    @property
    def b_dec_raw_MHD(self) -> Float[Tensor, "M H D"]:
        """The decoder bias in raw activation space (`decode(0)`)."""
        c = self.cfg
        return self.b_dec.view(c.n_models, c.n_hooks, c.d_model) / self.norm_scale[:, :, None]

    def decoder_norms(self) -> Float[Tensor, "L M H"]:
        """Per-(model, hook) decoder norms in normalised space (the basis of attribution scores)."""
        return self.W_dec_LMHD.norm(dim=-1)

    def dec_norm_sum(self) -> Float[Tensor, " L"]:
        """sum over (model, hook) blocks of each latent's decoder norm (normalised space): the weight of
        L1's penalty and of BatchTopK's selection, so that no block's scale decides alone."""
        c = self.cfg
        return self.W_dec.view(c.n_latents, c.n_models * c.n_hooks, c.d_model).norm(dim=-1).sum(-1)

    def _scale_K(self) -> Float[Tensor, " K"]:
        D = self.cfg.d_model
        return self.norm_scale[:, :, None].expand(-1, -1, D).reshape(-1)

    def normalise(self, x_BMHD: Tensor) -> Float[Tensor, "B K"]:
        """Raw `[B, M, H, D]` activations -> normalised flat `[B, K]`."""
        c = self.cfg
        if tuple(x_BMHD.shape[1:]) != (c.n_models, c.n_hooks, c.d_model):
            raise ValueError(
                f"expected activations [B, {c.n_models}, {c.n_hooks}, {c.d_model}] "
                f"(models {c.models}, hooks {c.hooks}), got {list(x_BMHD.shape)}"
            )
        return x_BMHD.reshape(x_BMHD.shape[0], -1).to(self.W_enc.dtype) * self._scale_K()

    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired > self.cfg.dead_tokens

    # --- inference (raw in, raw out) ----------------------------------------------------------

    def encode_normalised(self, x_BK: Tensor) -> Float[Tensor, "B L"]:
        """The joint encoding of normalised input (the variant's inference rule, per token)."""
        return self.variant.activation(self, torch.addmm(self.b_enc, x_BK, self.W_enc))

    def encode(self, x_BMHD: Float[Tensor, "B M H D"]) -> Float[Tensor, "B L"]:
        """Joint latent activations of paired tokens (every model's activations on the same token), any
        batch size. For one model's latents use `encode_as`."""
        return self.encode_normalised(self.normalise(x_BMHD))

    def model_index(self, model: str | int) -> int:
        """Slot of `model` (a name or an index) in the crosscoder, or a ValueError naming its models."""
        c = self.cfg
        if isinstance(model, int) and not isinstance(model, bool):
            if not 0 <= model < c.n_models:
                raise ValueError(f"model index {model} out of range: the crosscoder's models are {c.models}")
            return model
        if model not in c.models:
            raise ValueError(f"model {model!r} is not one of the crosscoder's models {c.models}")
        return c.models.index(model)

    def encode_as(
        self, x: Tensor, model: str | int, hook: str | int | None = None, latents: Tensor | None = None
    ) -> Float[Tensor, "B S"]:
        """Model m's latent activations from model m's activations alone: the one rule featalign uses
        wherever "model m's features" are read (success scores, typical activations, firing rates of
        matched controls, feature cards, interventions in a live model).

        `x` is m's raw activations `[B, H, D]` (`[B, D]` also accepted for a one-hook crosscoder), or
        `[B, D]` at one `hook` (the other hooks count as zero: in a live model a later hook does not
        exist yet when an earlier one is edited). `latents` restricts the output to those ids (cheap).

        The rule: normalise x with model m's scale and put it in *every* model's encoder slot, i.e.
        encode the paired token "as if every model had m's activation". In a live model only m runs,
        so there is no paired input; this is the input whose joint encoding reproduces the joint
        encoding of real paired tokens best (docs/crosscoder.md, "Reading one model's latents": it keeps
        ~all firings and activation mass, where m's slot alone with the others zero keeps far less).
        Because the encoder is linear before the activation, it is one matmul with m's slot and the
        other models' encoder rows summed, `x_m s_m sum_j W_enc[j]`. `encoder_as` returns the same
        function with its weights gathered once (for hooks that encode on every forward call).
        """
        return self.encoder_as(model, hook, latents)(x)

    def encoder_as(
        self, model: str | int, hook: str | int | None = None, latents: Tensor | None = None
    ) -> Callable[[Tensor], Tensor]:
        """`x -> encode_as(x, model, hook, latents)` with the summed encoder rows, scales, bias and the
        variant's constants read once (a snapshot: later weight updates do not reach it)."""
        c = self.cfg
        m = self.model_index(model)
        if hook is not None:
            h = hook if isinstance(hook, int) else c.hooks.index(hook) if hook in c.hooks else None
            if h is None or not 0 <= h < c.n_hooks:
                raise ValueError(f"hook {hook!r} is not one of the crosscoder's hooks {c.hooks}")
            hooks = [h]
        else:
            hooks = list(range(c.n_hooks))
        W_MHDL = self.W_enc.view(c.n_models, c.n_hooks, c.d_model, c.n_latents)
        b_S: Tensor = self.b_enc
        if latents is not None:
            latents = torch.as_tensor(latents, dtype=torch.long, device=self.W_enc.device)
            W_MHDL, b_S = W_MHDL[..., latents], b_S[latents]
        # fold m's scale into the summed rows: pre = b + sum_h x_{m,h} (s_{m,h} sum_j W_enc[j, h])
        W_hDS = [W_MHDL[:, h].sum(0) * self.norm_scale[m, h] for h in hooks]
        act = self.variant.activation_for(self, latents)
        name, one_hook = c.models[m], hook is not None or c.n_hooks == 1

        def encode(x: Tensor) -> Tensor:
            x_BHD = x.reshape(-1, 1, c.d_model) if x.ndim == 2 and one_hook else x
            if tuple(x_BHD.shape[1:]) != (len(hooks), c.d_model):
                raise ValueError(
                    f"expected model {name!r}'s activations [B, {len(hooks)}, {c.d_model}] "
                    f"(hooks {tuple(c.hooks[h] for h in hooks)}), got {list(x.shape)}"
                )
            pre_BS = b_S.expand(x_BHD.shape[0], -1)
            for i, W_DS in enumerate(W_hDS):
                pre_BS = torch.addmm(pre_BS, x_BHD[:, i].to(W_DS.dtype), W_DS)
            return act(pre_BS)

        return encode

    def decode(self, f_BL: Float[Tensor, "B L"]) -> Float[Tensor, "B M H D"]:
        """Raw-space reconstruction of every model's activations from latents."""
        c = self.cfg
        x_BK = torch.addmm(self.b_dec, f_BL.to(self.W_dec.dtype), self.W_dec) / self._scale_K()
        return x_BK.view(-1, c.n_models, c.n_hooks, c.d_model)

    def forward(self, x_BMHD: Float[Tensor, "B M H D"]) -> Float[Tensor, "B M H D"]:
        return self.decode(self.encode(x_BMHD))

    # --- training -----------------------------------------------------------------------------

    def training_forward(self, x_BK: Float[Tensor, "B K"], sparsity_coef: float = 0.0) -> TrainOutput:
        """The variant's training loss on normalised input (summed squared error per token, mean over
        tokens, plus its sparsity / auxiliary terms)."""
        return self.variant.training_forward(self, x_BK, sparsity_coef)

    @torch.no_grad()
    def update_firing(self, fired_L: Tensor, n_tokens: int) -> None:
        self.tokens_since_fired.add_(n_tokens)
        self.tokens_since_fired[fired_L] = 0

    @torch.no_grad()
    def resample_dead(self, x_BK: Tensor, x_hat_BK: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Point dead latents at badly reconstructed tokens (Anthropic, "Towards Monosemanticity").

        Each dead latent gets the normalised error of a token drawn with probability ∝ its squared
        error as decoder direction (norm: the mean alive decoder norm per (model, hook) block) and
        as encoder direction (scaled to the variant's `resample_encoder_scale` times the mean alive
        encoder norm); bias zeroed.
        Returns the resampled latent indices (the caller resets their optimizer state).
        """
        c = self.cfg
        dead = self.dead_mask().nonzero().squeeze(-1)
        alive = ~self.dead_mask()
        if dead.numel() == 0 or not alive.any():
            return dead
        err_BK = (x_BK - x_hat_BK).float()
        w_B = err_BK.pow(2).sum(-1)
        choice = torch.multinomial(
            w_B.clamp_min(1e-12), dead.numel(), replacement=dead.numel() > w_B.numel(), generator=generator
        )
        e_DK = err_BK[choice]
        e_DND = e_DK.view(-1, c.n_models * c.n_hooks, c.d_model)
        dec_norm_N = self.W_dec.view(c.n_latents, -1, c.d_model)[alive].norm(dim=-1).mean(0)
        e_dir = e_DND / e_DND.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        self.W_dec[dead] = (e_dir * dec_norm_N[None, :, None]).reshape(dead.numel(), -1)
        enc_norm = self.W_enc[:, alive].norm(dim=0).mean()
        e_unit = e_DK / e_DK.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        scale = self.variant.resample_encoder_scale
        self.W_enc[:, dead] = (scale * enc_norm * e_unit).t()
        self.b_enc[dead] = 0.0
        self.tokens_since_fired[dead] = 0
        return dead

    # --- save / load --------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write `cfg.json` and `crosscoder.safetensors` (atomically) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, st_save(tensors, metadata={"format_version": str(FORMAT_VERSION)}))
        write_config(directory, self.cfg)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Crosscoder:
        """Load a crosscoder written by `save` (or by `python -m featalign.train_crosscoder`)."""
        directory = Path(directory)
        if not (directory / CFG_FILE).exists() or not (directory / WEIGHTS_FILE).exists():
            raise FileNotFoundError(f"{directory} has no {CFG_FILE} + {WEIGHTS_FILE}; point at a training output dir")
        cfg, version = read_config(directory)
        model = cls(cfg)
        model.load_state_dict(migrate_state_dict(load_file(str(directory / WEIGHTS_FILE)), cfg.variant, version))
        return model.to(device)


def write_config(directory: str | Path, cfg: CrosscoderConfig) -> None:
    """Write `directory/cfg.json` atomically: the config, this featalign's format version and a provenance
    stamp. The one writer of the file, so `Crosscoder.save` and the trainer (which writes it first, to
    refuse a resume with other settings) can never disagree on its contents."""
    atomic_write_json(
        Path(directory) / CFG_FILE, {**cfg.to_dict(), "format_version": FORMAT_VERSION, "provenance": provenance()}
    )


def read_config(directory: str | Path) -> tuple[CrosscoderConfig, int]:
    """Read `directory/cfg.json` -> (config, the format version it was written in), older formats migrated;
    a missing or newer format version is refused (`check_format_version`)."""
    path = Path(directory) / CFG_FILE
    d = dict(read_json(path))
    version = check_format_version(d.pop("format_version", None), path)
    d.pop("provenance", None)
    return CrosscoderConfig.from_dict(migrate_config(d, version)), version


def check_format_version(version: int | str | None, where: str | Path) -> int:
    """`version` as an int, refusing a missing one (not featalign's file) or one newer than this featalign
    reads; `where` (a path) names the file in the error."""
    if version is None:
        raise ValueError(f"{where} has no format_version; it was not written by featalign's crosscoder")
    if int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{where} has format version {version}, newer than this featalign's {FORMAT_VERSION}; "
            "upgrade featalign (pip install -U featalign) to read it"
        )
    return int(version)
