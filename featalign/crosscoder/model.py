"""The N-model crosscoder: one shared encoder over `[M, H, d]`, one decoder per (model, hook).

Notation: B batch, M models, H hooks, D d_model, K = M*H*D (concatenated input), L latents.
Training works in *normalised* space (each (model, hook) block scaled so that E||x|| = sqrt(D),
as in Anthropic's crosscoder); `norm_scale` [M, H] lives in the checkpoint so the public
`encode`/`decode`/`forward` take raw activations and return raw activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import Tensor, nn

from featalign.crosscoder.config import FORMAT_VERSION, CrosscoderConfig
from featalign.io import atomic_write_bytes, atomic_write_json, provenance, read_json

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "crosscoder.safetensors"


@dataclass
class TrainOutput:
    """What one training forward pass returns (all in normalised space)."""

    loss: Tensor
    parts: dict[str, Tensor]  # recon / sparsity / aux (detached scalars for logging, except loss)
    x_hat_BK: Tensor
    fired_L: Tensor  # bool: latent fired at least once in this batch
    l0: Tensor | Callable[[], Tensor]  # mean active latents per token (l1: computed on demand)
    min_selected: Tensor | None = None  # batchtopk: smallest selected (norm-weighted) activation
    extra: dict = field(default_factory=dict)


class _GatherPre(torch.autograd.Function):
    """`pre[rows, cols]` where pre = x @ W_enc + b_enc, with a backward that touches only those entries.

    The dense backward of the encoder costs 2·B·K·L FLOPs; through nnz = k·B active latents it
    costs 2·nnz·K. The weight gradient is an `embedding_bag` over the active (row, col) pairs
    grouped by latent (measured faster than `torch.sparse.mm` and `index_add_` on CPU).
    """

    @staticmethod
    def forward(ctx, pre_flat, flat_idx, x_BK, W_enc_KL, b_enc_L, rows, cols):
        ctx.save_for_backward(x_BK, W_enc_KL, rows, cols)
        ctx.L = b_enc_L.shape[0]
        return pre_flat[flat_idx]

    @staticmethod
    def backward(ctx, g_N):
        x_BK, W_enc_KL, rows, cols = ctx.saved_tensors
        L = ctx.L
        g_N = g_N.to(x_BK.dtype)
        gW = gb = gx = None
        order = torch.argsort(cols, stable=True)
        cols_s = cols[order]
        counts_L = torch.bincount(cols_s, minlength=L)
        offsets_L = torch.cumsum(counts_L, 0) - counts_L
        if ctx.needs_input_grad[3]:
            gW_LK = F.embedding_bag(rows[order], x_BK, offsets_L, mode="sum", per_sample_weights=g_N[order])
            gW = gW_LK.t()
        if ctx.needs_input_grad[4]:
            gb = torch.zeros(L, dtype=g_N.dtype, device=g_N.device).index_add_(0, cols, g_N)
        if ctx.needs_input_grad[2]:
            B = x_BK.shape[0]
            counts_B = torch.bincount(rows, minlength=B)
            gx = F.embedding_bag(cols, W_enc_KL.t(), torch.cumsum(counts_B, 0) - counts_B, mode="sum",
                                 per_sample_weights=g_N)
        return None, None, gx, gW, gb, None, None


def batch_topk_indices(v_flat: Tensor, n: int, lower_bound: float = 0.0) -> Tensor:
    """Indices of the n largest entries of `v_flat` (exact, unordered).

    `torch.topk` over all B·L entries was 50% of a BatchTopK step (measured: 237 ms of 450 ms at
    B=2048, L=2048). With a lower bound below the n-th value (half the EMA threshold) only the
    candidates above it go through topk; if fewer than n pass, the full topk is the fallback, so
    the result is always the exact top n.
    """
    if lower_bound > 0:
        cand = (v_flat > lower_bound).nonzero().squeeze(1)
        if cand.numel() >= n:
            return cand[v_flat[cand].topk(n, sorted=False).indices]
    return v_flat.topk(n, sorted=False).indices


class _ReluEncode(torch.autograd.Function):
    """f = relu(x @ W_enc + b_enc) and its column sums, with a hand-written backward.

    Autograd's path for the L1 variant spent ~30% of a dense step outside the matmuls (measured
    at B=L=4096, K=384): three `sum(0)` reductions over [B, L] (~50 ms each), a relu copy, a
    threshold-backward copy and a copy to accumulate the penalty's broadcast gradient. Here the
    relu is in place, column sums are matrix-vector products, and the penalty gradient is added
    once before masking.
    """

    @staticmethod
    def forward(ctx, x_BK, W_enc_KL, b_enc_L):
        # bias through the GEMM ([x, 1] @ [W; b]): no [B, L] broadcast copy, and the bias gradient
        # comes out of the weight-gradient GEMM
        ones_B1 = torch.ones(x_BK.shape[0], 1, dtype=x_BK.dtype, device=x_BK.device)
        xa_BK1 = torch.cat([x_BK, ones_B1], 1)
        f_BL = (xa_BK1 @ torch.cat([W_enc_KL, b_enc_L[None]], 0)).relu_()
        ctx.save_for_backward(xa_BK1, W_enc_KL, f_BL)
        return f_BL, torch.mv(f_BL.t(), ones_B1[:, 0].to(f_BL.dtype))

    @staticmethod
    def backward(ctx, g_f_BL, g_s_L):
        xa_BK1, W_enc_KL, f_BL = ctx.saved_tensors
        g_BL = g_f_BL if g_s_L is None else g_f_BL + g_s_L
        g_BL = g_BL.masked_fill(f_BL <= 0, 0.0) if g_s_L is None else g_BL.masked_fill_(f_BL <= 0, 0.0)
        gx = g_BL @ W_enc_KL.t().to(g_BL.dtype) if ctx.needs_input_grad[0] else None
        gWb = xa_BK1.t().to(g_BL.dtype) @ g_BL if (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]) else None
        gW = gWb[:-1] if ctx.needs_input_grad[1] else None
        gb = gWb[-1] if ctx.needs_input_grad[2] else None
        return gx, gW, gb


def _rect(z: Tensor) -> Tensor:
    return (z.abs() < 0.5).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    """f = pre·H(pre - θ); straight-through (rectangle-kernel) gradient for θ (Rajamanoharan et al. 2024)."""

    @staticmethod
    def forward(ctx, pre_BL, theta_L, eps: float):
        ctx.save_for_backward(pre_BL, theta_L)
        ctx.eps = eps
        return pre_BL * (pre_BL > theta_L)

    @staticmethod
    def backward(ctx, g_BL):
        pre_BL, theta_L = ctx.saved_tensors
        eps = ctx.eps
        g_pre = g_BL * (pre_BL > theta_L)
        g_theta = (-(theta_L / eps) * _rect((pre_BL - theta_L) / eps) * g_BL).sum(0)
        return g_pre, g_theta, None


class _Step(torch.autograd.Function):
    """H(pre - θ) with the straight-through gradient for θ (for the L0 penalty)."""

    @staticmethod
    def forward(ctx, pre_BL, theta_L, eps: float):
        ctx.save_for_backward(pre_BL, theta_L)
        ctx.eps = eps
        return (pre_BL > theta_L).to(pre_BL.dtype)

    @staticmethod
    def backward(ctx, g_BL):
        pre_BL, theta_L = ctx.saved_tensors
        eps = ctx.eps
        g_theta = (-(1.0 / eps) * _rect((pre_BL - theta_L) / eps) * g_BL).sum(0)
        return None, g_theta, None


class Crosscoder(nn.Module):
    """Shared encoder over the concatenated `[M, H, D]` input, one decoder block per (model, hook).

    Parameters (SAELens layout): `W_enc` [K, L], `b_enc` [L], `W_dec` [L, K] (view as
    [L, M, H, D] with `W_dec_LMHD`), `b_dec` [K]; jumprelu adds `log_threshold` [L].
    Buffers: `norm_scale` [M, H], `threshold` (batchtopk inference threshold),
    `tokens_since_fired` [L] (dead-latent tracking).
    """

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
        if cfg.variant == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((L,), math.log(cfg.jumprelu_init_threshold)))
        penalty_L = torch.ones(L)
        penalty_L[: cfg.n_shared] = cfg.shared_penalty
        self.register_buffer("penalty", penalty_L)
        self.register_buffer("norm_scale", torch.ones(M, H))
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))
        self.register_buffer("tokens_since_fired", torch.zeros(L, dtype=torch.int64))

    # --- shapes and norms ---------------------------------------------------------------------

    @property
    def W_dec_LMHD(self) -> Float[Tensor, "L M H D"]:
        c = self.cfg
        return self.W_dec.view(c.n_latents, c.n_models, c.n_hooks, c.d_model)

    def decoder_norms(self) -> Float[Tensor, "L M H"]:
        """Per-(model, hook) decoder norms in normalised space (the basis of attribution scores)."""
        return self.W_dec_LMHD.norm(dim=-1)

    def _dec_norm_sum(self) -> Float[Tensor, "L"]:
        c = self.cfg
        return self.W_dec.view(c.n_latents, c.n_models * c.n_hooks, c.d_model).norm(dim=-1).sum(-1)

    def _scale_K(self) -> Float[Tensor, "K"]:
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
        pre_BL = torch.addmm(self.b_enc, x_BK, self.W_enc)
        v = self.cfg.variant
        if v == "l1":
            return F.relu(pre_BL)
        if v == "jumprelu":
            theta_L = self.log_threshold.exp()
            return pre_BL * (pre_BL > theta_L)
        # batchtopk: a per-token rule with the EMA threshold, so encoding does not depend on the batch
        act_BL = F.relu(pre_BL)
        return act_BL * (act_BL * self._dec_norm_sum() > self.threshold.to(act_BL.dtype))

    def encode(self, x_BMHD: Float[Tensor, "B M H D"]) -> Float[Tensor, "B L"]:
        """Latent activations for raw activations (any batch size, including one token)."""
        return self.encode_normalised(self.normalise(x_BMHD))

    def decode(self, f_BL: Float[Tensor, "B L"]) -> Float[Tensor, "B M H D"]:
        """Raw-space reconstruction of every model's activations from latents."""
        c = self.cfg
        x_BK = torch.addmm(self.b_dec, f_BL.to(self.W_dec.dtype), self.W_dec) / self._scale_K()
        return x_BK.view(-1, c.n_models, c.n_hooks, c.d_model)

    def forward(self, x_BMHD: Float[Tensor, "B M H D"]) -> Float[Tensor, "B M H D"]:
        return self.decode(self.encode(x_BMHD))

    # --- training -----------------------------------------------------------------------------

    def training_forward(
        self, x_BK: Float[Tensor, "B K"], sparsity_coef: float = 0.0, sparse: bool | None = None
    ) -> TrainOutput:
        """Loss on normalised input: summed squared error per token (mean over tokens) + sparsity + aux."""
        v = self.cfg.variant
        if v == "batchtopk":
            use_sparse = self.cfg.sparse_decode if sparse is None else sparse
            return self._forward_batchtopk(x_BK, use_sparse)
        if v == "l1":
            if torch.is_autocast_enabled(x_BK.device.type):  # the custom Function is not autocast-aware
                dt = torch.get_autocast_dtype(x_BK.device.type)
                f_BL, s_L = _ReluEncode.apply(x_BK.to(dt), self.W_enc.to(dt), self.b_enc.to(dt))
            else:
                f_BL, s_L = _ReluEncode.apply(x_BK, self.W_enc, self.b_enc)
            w_L = self._dec_norm_sum() * self.penalty
            sparsity = (s_L.float() @ w_L.float()) / f_BL.shape[0]
        else:
            pre_BL = torch.addmm(self.b_enc, x_BK, self.W_enc)
            theta_L = self.log_threshold.exp()
            eps = self.cfg.jumprelu_bandwidth
            f_BL = _JumpReLU.apply(pre_BL, theta_L.to(pre_BL.dtype), eps)
            sparsity = _Step.apply(pre_BL, theta_L.to(pre_BL.dtype), eps).sum(-1).mean()
        x_hat_BK = torch.addmm(self.b_dec, f_BL, self.W_dec)
        recon = (x_hat_BK.float() - x_BK.float()).pow(2).sum(-1).mean()
        loss = recon + sparsity_coef * sparsity.float()
        with torch.no_grad():
            if v == "l1":  # fired = positive column sum (free); L0 is only counted when logged
                fired_L, B = s_L > 0, f_BL.shape[0]
                l0 = lambda: torch.count_nonzero(f_BL).float() / B  # noqa: E731
            else:
                n_active_L = torch.count_nonzero(f_BL, dim=0)  # one pass for both firing and L0
                fired_L, l0 = n_active_L > 0, n_active_L.sum().float() / f_BL.shape[0]
        return TrainOutput(loss, {"recon": recon.detach(), "sparsity": sparsity.detach().float()},
                           x_hat_BK, fired_L, l0)

    def _forward_batchtopk(self, x_BK: Tensor, sparse: bool) -> TrainOutput:
        B, L = x_BK.shape[0], self.cfg.n_latents
        n_keep = min(self.cfg.k * B, B * L)
        w_L = self._dec_norm_sum().detach()
        bound = 0.5 * self.threshold.item()  # safely below the n-th value: prunes the top-k candidates
        if sparse:
            with torch.no_grad():
                pre_BL = torch.addmm(self.b_enc, x_BK, self.W_enc)
                flat_idx = batch_topk_indices((F.relu(pre_BL) * w_L.to(pre_BL.dtype)).view(-1), n_keep, bound)
                flat_idx = flat_idx.sort().values  # row-major: groups the active latents by token
                rows, cols = flat_idx // L, flat_idx % L
                counts_B = torch.bincount(rows, minlength=B)
                offsets_B = torch.cumsum(counts_B, 0) - counts_B
            vals = F.relu(_GatherPre.apply(pre_BL.view(-1), flat_idx, x_BK, self.W_enc, self.b_enc, rows, cols))
            x_hat_BK = F.embedding_bag(cols, self.W_dec, offsets_B, mode="sum",
                                       per_sample_weights=vals.to(self.W_dec.dtype)) + self.b_dec
            with torch.no_grad():
                pos = vals > 0
                fired_L = torch.zeros(L, dtype=torch.bool, device=x_BK.device)
                fired_L[cols[pos]] = True
                l0 = pos.sum().float() / B
                sel = vals[pos] * w_L[cols[pos]].to(vals.dtype)
        else:  # dense reference: identical maths through full matmuls
            pre_BL = torch.addmm(self.b_enc, x_BK, self.W_enc)
            act_BL = F.relu(pre_BL)
            with torch.no_grad():
                flat_idx = batch_topk_indices((act_BL * w_L.to(act_BL.dtype)).view(-1), n_keep, bound)
                mask = torch.zeros(B * L, dtype=act_BL.dtype, device=x_BK.device).index_fill_(0, flat_idx, 1)
            f_BL = act_BL * mask.view(B, L)
            x_hat_BK = torch.addmm(self.b_dec, f_BL, self.W_dec)
            with torch.no_grad():
                active = f_BL > 0
                fired_L, l0 = active.any(0), active.sum().float() / B
                sel = (f_BL * w_L.to(f_BL.dtype))[active]
        recon = (x_hat_BK.float() - x_BK.float()).pow(2).sum(-1).mean()
        aux = self._aux_loss(x_BK, x_hat_BK, pre_BL.detach())
        loss = recon + self.cfg.aux_coef * aux
        min_sel = sel.min().double() if sel.numel() else None
        return TrainOutput(loss, {"recon": recon.detach(), "aux": aux.detach()}, x_hat_BK, fired_L, l0, min_sel)

    def _aux_loss(self, x_BK: Tensor, x_hat_BK: Tensor, pre_BL: Tensor) -> Tensor:
        """Aux-k (Gao et al. 2024): the top aux_k dead latents per token reconstruct the residual (no bias)."""
        dead_idx = self.dead_mask().nonzero().squeeze(-1)
        if dead_idx.numel() == 0:
            return torch.zeros((), device=x_BK.device)
        B, L = pre_BL.shape
        kk = min(self.cfg.aux_k, dead_idx.numel())
        with torch.no_grad():
            top = pre_BL[:, dead_idx].topk(kk, dim=-1)
            cols = dead_idx[top.indices].reshape(-1)
            rows = torch.arange(B, device=x_BK.device).repeat_interleave(kk)
            flat_idx = rows * L + cols
        # raw pre-activations, no ReLU: a dead latent's pre is usually negative everywhere, and the
        # gradient must still reach it (as in sae_lens / EleutherAI sparsify)
        vals = _GatherPre.apply(pre_BL.reshape(-1), flat_idx, x_BK, self.W_enc, self.b_enc, rows, cols)
        e_hat_BK = F.embedding_bag(cols, self.W_dec, torch.arange(B, device=x_BK.device) * kk, mode="sum",
                                   per_sample_weights=vals.to(self.W_dec.dtype))
        e_BK = (x_BK - x_hat_BK).detach().float()
        scale = min(dead_idx.numel() / self.cfg.aux_k, 1.0)  # weaker when few latents are dead
        return scale * (e_hat_BK.float() - e_BK).pow(2).sum(-1).mean()

    @torch.no_grad()
    def update_threshold(self, min_selected: Tensor | None) -> None:
        """EMA of the smallest selected activation: the inference threshold of BatchTopK."""
        if min_selected is None:
            return
        m = min_selected.to(self.threshold.dtype)
        if self.threshold.item() == 0.0:
            self.threshold.copy_(m)
        else:
            a = self.cfg.threshold_ema
            self.threshold.mul_(1 - a).add_(a * m)

    @torch.no_grad()
    def update_firing(self, fired_L: Tensor, n_tokens: int) -> None:
        self.tokens_since_fired.add_(n_tokens)
        self.tokens_since_fired[fired_L] = 0

    @torch.no_grad()
    def resample_dead(self, x_BK: Tensor, x_hat_BK: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Point dead latents at badly reconstructed tokens (Anthropic, "Towards Monosemanticity").

        Each dead latent gets the normalised error of a token drawn with probability ∝ its squared
        error as decoder direction (norm: the mean alive decoder norm per (model, hook) block) and
        as encoder direction (scaled to 0.2x the mean alive encoder norm for l1/jumprelu, 1x for
        batchtopk, where a resampled latent must win the top-k competition to learn); bias zeroed.
        Returns the resampled latent indices (the caller resets their optimizer state).
        """
        c = self.cfg
        dead = self.dead_mask().nonzero().squeeze(-1)
        alive = ~self.dead_mask()
        if dead.numel() == 0 or not alive.any():
            return dead
        err_BK = (x_BK - x_hat_BK).float()
        w_B = err_BK.pow(2).sum(-1)
        choice = torch.multinomial(w_B.clamp_min(1e-12), dead.numel(), replacement=dead.numel() > w_B.numel(),
                                   generator=generator)
        e_DK = err_BK[choice]
        e_DND = e_DK.view(-1, c.n_models * c.n_hooks, c.d_model)
        dec_norm_N = self.W_dec.view(c.n_latents, -1, c.d_model)[alive].norm(dim=-1).mean(0)
        e_dir = e_DND / e_DND.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        self.W_dec[dead] = (e_dir * dec_norm_N[None, :, None]).reshape(dead.numel(), -1)
        enc_norm = self.W_enc[:, alive].norm(dim=0).mean()
        e_unit = e_DK / e_DK.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        scale = 1.0 if c.variant == "batchtopk" else 0.2
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
        atomic_write_json(directory / CFG_FILE,
                          {**self.cfg.to_dict(), "format_version": FORMAT_VERSION, "provenance": provenance()})
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "Crosscoder":
        """Load a crosscoder written by `save` (or by `python -m featalign.train_crosscoder`)."""
        directory = Path(directory)
        if not (directory / CFG_FILE).exists() or not (directory / WEIGHTS_FILE).exists():
            raise FileNotFoundError(f"{directory} has no {CFG_FILE} + {WEIGHTS_FILE}; point at a training output dir")
        d = read_json(directory / CFG_FILE)
        check_format_version(d.pop("format_version", None), directory / CFG_FILE)
        d.pop("provenance", None)
        model = cls(CrosscoderConfig.from_dict(d))
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return model.to(device)


def check_format_version(version, where) -> None:
    if version is None:
        raise ValueError(f"{where} has no format_version; it was not written by featalign's crosscoder")
    if int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{where} has format version {version}, newer than this featalign's {FORMAT_VERSION}; "
            "upgrade featalign (pip install -U featalign) to read it"
        )
