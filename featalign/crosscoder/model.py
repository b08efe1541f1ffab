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
    # bool [L]: latent fired at least once in this batch (l1: a callable, free once backward has run)
    fired_L: Tensor | Callable[[], Tensor]
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


# pad the augmented inner dimension (K inputs + the bias/penalty column) to a multiple of 8 with
# zeros: at K = 384 the bf16 GEMMs with 385 rows/columns ran at 270-370 GFLOP/s, with 392 at
# 370-405 (measured, one thread); the padding's extra FLOPs are not counted as useful work
_PAD = 8


class _Scratch:
    """Scratch tensors of `_DenseL1`, kept between steps (not model state).

    A fresh [B, L] tensor costs page faults on first touch: `empty(4096, 4096).fill_(1)` took 26 ms
    vs 2 ms for refilling a kept one (measured), i.e. ~25 ms per fp32 [B, L] tensor per step. The
    forward's buffers (saved for the backward) are lent to one forward at a time and handed back
    by its backward; a forward that finds them lent (two forwards before a backward) allocates its
    own. Each lending bumps a stamp, so a use of stale buffers (a second backward through a graph
    whose buffers have been lent again; `l0()` / `fired_L()` of an earlier step) raises instead of
    reading overwritten memory.
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

    def __deepcopy__(self, memo) -> "_Scratch":
        return _Scratch()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state) -> None:
        self._free = {}


def _check_stamp(lease: tuple, what: str) -> None:
    stamp, n = lease[:2]
    if stamp[0] != n:
        raise RuntimeError(f"{what} of an l1 training_forward whose buffers a later training_forward has reused; "
                           "run backward (and read l0) before the next training_forward")


class _DenseL1(torch.autograd.Function):
    """The tensor work of a dense L1 (ReLU) step in one function:

        f = relu(x W_enc + b_enc),  x_hat = f W_dec + b_dec,
        recon = sum((x_hat - x)^2) / B,  sparsity = sum(f · w) / B,  w_l = penalty_l · sum_n ||W_dec[l, n]||

    (n: the (model, hook) blocks), plus f itself (L0 when logged); which latents fired comes out
    of the backward (see `fired` below). Inputs are cast once to the compute dtype `cdt` (bf16 under autocast, fp32 master
    weights; gradients come back in the inputs' dtypes). It replaces autograd's graph, which spent
    ~half of a bf16 step outside the GEMMs (measured at B = L = 4096, K = 384). Each [B, L] piece
    of work is one GEMM or one elementwise pass:

    * the encoder bias rides in the encoder GEMM (`[x, 1] @ [W_enc; b_enc]`); its gradient comes
      out of the weight-gradient GEMM;
    * the penalty rides in the decoder GEMM as an extra column (`f @ [W_dec | w]`): its value is
      the last output column; its gradient w.r.t. f (w broadcast over the batch) folds into the
      `g @ [W_dec | w]^T` GEMM, and w.r.t. w it is the last column of the decoder
      weight-gradient GEMM. Autograd's path added a [B, L] broadcast after the GEMM (~50 ms);
    * the ReLU mask is applied in place with `threshold_backward`: 3 ms at B = L = 4096 (measured)
      where `masked_fill_(f <= 0, 0)` took 66 ms plus 6-70 ms for the comparison;
    * the decoder norms' gradient (d sum_n ||W_n|| / dW = W / ||W||) is added to the GEMM's
      weight gradient in the same pass that casts it to fp32 (`addcmul`), instead of autograd's
      four passes over [L, K];
    * the reconstruction error is formed once (fp32) and its gradient written straight into the
      GEMM operand;
    * [B, L] buffers are reused across steps (`_Scratch`).
    """

    @staticmethod
    def forward(ctx, x_BK, W_enc_KL, b_enc_L, W_dec_LK, b_dec_K, penalty_L, n_blocks: int, cdt, ws, lease: list):
        B, K = x_BK.shape
        L = W_enc_KL.shape[1]
        Kp = -(-(K + 2) // _PAD) * _PAD  # >= 1 padding column (the backward's column sums)
        dev = x_BK.device
        edt = torch.promote_types(torch.promote_types(x_BK.dtype, cdt), torch.float32)  # error dtype
        key = (B, K, L, cdt, edt, dev)

        def make() -> dict:  # constant parts (ones column, zero padding) are written once
            xa_BKp = torch.zeros(B, Kp, dtype=cdt, device=dev)
            xa_BKp[:, K] = 1
            return {"xa": xa_BKp, "Wa": torch.zeros(Kp, L, dtype=cdt, device=dev),
                    "Wd": torch.zeros(L, Kp, dtype=cdt, device=dev), "f": torch.empty(B, L, dtype=cdt, device=dev),
                    "out": torch.empty(B, Kp, dtype=cdt, device=dev), "err": torch.empty(B, K, dtype=edt, device=dev),
                    "stamp": [0]}

        bufs = ws.take(("fwd", key), make) if ws is not None else make()
        bufs["stamp"][0] += 1
        xa_BKp, Wa_KpL, Wd_LKp, f_BL, out_BKp, err_BK = (bufs[k] for k in ("xa", "Wa", "Wd", "f", "out", "err"))
        with torch.autocast(dev.type, enabled=False), torch.no_grad():
            xa_BKp[:, :K] = x_BK
            Wa_KpL[:K] = W_enc_KL
            Wa_KpL[K] = b_enc_L
            torch.mm(xa_BKp, Wa_KpL, out=f_BL).relu_()
            norms_LN = W_dec_LK.view(L, n_blocks, -1).norm(dim=-1)
            Wd_LKp[:, :K] = W_dec_LK
            Wd_LKp[:, K] = norms_LN.sum(-1) * penalty_L
            torch.mm(f_BL, Wd_LKp, out=out_BKp)
            x_hat_BK = torch.add(out_BKp[:, :K], b_dec_K.to(cdt))
            torch.sub(x_hat_BK, x_BK, out=err_BK)
            recon = torch.dot(err_BK.view(-1), err_BK.view(-1)) / B
            sparsity = out_BKp[:, K].to(edt).sum() / B
        ctx.save_for_backward(W_dec_LK)
        ctx.bufs, ctx.key, ctx.ws, ctx.lease = bufs, key, ws, (bufs["stamp"], bufs["stamp"][0])
        ctx.norms_LN, ctx.penalty_L = norms_LN, penalty_L
        ctx.dtypes = (x_BK.dtype, W_enc_KL.dtype, b_enc_L.dtype, W_dec_LK.dtype, b_dec_K.dtype)
        lease.append((*ctx.lease, bufs))
        ctx.mark_non_differentiable(f_BL)
        # unused output gradients arrive as None: by default autograd materialises zeros for them,
        # a [B, L] fill for f (12-22 ms per bf16 step, measured)
        ctx.set_materialize_grads(False)
        return recon, sparsity, x_hat_BK, f_BL

    @staticmethod
    def backward(ctx, g_recon, g_sparsity, g_xhat_BK, _g_f):
        _check_stamp(ctx.lease, "backward")
        (W_dec_LK,) = ctx.saved_tensors
        bufs = ctx.bufs
        xa_BKp, Wa_KpL, Wd_LKp, f_BL, err_BK = (bufs[k] for k in ("xa", "Wa", "Wd", "f", "err"))
        dx, dWe, dbe, dWd, dbd = ctx.dtypes
        (B, Kp), L, cdt, dev = xa_BKp.shape, f_BL.shape[1], f_BL.dtype, f_BL.device
        K, edt = err_BK.shape[1], err_BK.dtype

        def make() -> dict:
            g_BKp = torch.zeros(B, Kp, dtype=cdt, device=dev)
            g_BKp[:, K + 1] = 1  # f^T @ this column = the column sums of f, i.e. firing (W_dec's row is 0)
            return {"g_BL": torch.empty(B, L, dtype=cdt, device=dev), "g_BKp": g_BKp}

        # taken out of the workspace while in use (a concurrent backward allocates its own)
        scratch = ctx.ws.take(("bwd", ctx.key), make) if ctx.ws is not None else make()
        g_BL, g_BKp = scratch["g_BL"], scratch["g_BKp"]
        # d recon / d x_hat = 2 err g / B; the penalty column's gradient is g_sparsity / B per token
        scale = (2.0 / B) * (g_recon if g_recon is not None else torch.zeros((), device=dev))
        if dev.type == "cpu":  # a Python scalar: 0.35 ms vs 2.5 ms for a 0-d tensor into the bf16 view (measured)
            scale = scale.item()
        torch.mul(err_BK, scale, out=g_BKp[:, :K])
        gb_dec_K = err_BK.sum(0) * scale
        if g_xhat_BK is not None:
            g_BKp[:, :K] += g_xhat_BK
            gb_dec_K = gb_dec_K + g_xhat_BK.sum(0)
        g_BKp[:, K] = (g_sparsity / B) if g_sparsity is not None else 0.0
        need = ctx.needs_input_grad
        gx = gWe = gbe = gWd = gbd = None
        if need[3]:
            gWd_LKp = torch.mm(f_BL.t(), g_BKp)
            # firing for free: a separate column-sum pass over f took 3-5 ms (2-3% of a bf16 step)
            bufs["fired"] = (ctx.lease[1], gWd_LKp[:, K + 1] > 0)
            # the penalty weight w_l = penalty_l · sum_n ||W_dec[l, n]||: its gradient reaches W_dec as
            # g_w,l · penalty_l · W_dec[l, n] / ||W_dec[l, n]|| (0 where a norm is 0, as torch's norm backward)
            norms_LN = ctx.norms_LN
            c_LN = (gWd_LKp[:, K].to(norms_LN.dtype) * ctx.penalty_L)[:, None] / norms_LN
            c_LN = c_LN.masked_fill_(norms_LN == 0, 0.0)
            n = norms_LN.shape[1]
            gWd = torch.addcmul(gWd_LKp[:, :K].view(L, n, -1), W_dec_LK.view(L, n, -1), c_LN[:, :, None])
            gWd = gWd.to(dWd).view(L, K)
        if need[4]:
            gbd = gb_dec_K.to(dbd)
        if need[0] or need[1] or need[2]:
            torch.mm(g_BKp, Wd_LKp.t(), out=g_BL)
            torch.ops.aten.threshold_backward.grad_input(g_BL, f_BL, 0, grad_input=g_BL)  # ReLU mask, in place
            if (need[1] or need[2]) and cdt == dWe:
                gWa_KpL = torch.mm(xa_BKp.t(), g_BL)
                gWe = gWa_KpL[:K] if need[1] else None
                gbe = gWa_KpL[K].to(dbe) if need[2] else None
            elif need[1] or need[2]:
                # reduced precision: the [L, Kp] orientation of this GEMM is ~5% faster in bf16, and the
                # cast to the weights' dtype has to copy anyway (measured 33.3 vs 35.0 ms with the copy)
                gWa_LKp = torch.mm(g_BL.t(), xa_BKp)
                gWe = torch.empty(K, L, dtype=dWe, device=dev).copy_(gWa_LKp[:, :K].t()) if need[1] else None
                gbe = gWa_LKp[:, K].to(dbe) if need[2] else None
            if need[0]:  # through the encoder, and directly through the error (x_hat - x)
                gx = torch.mm(g_BL, Wa_KpL[:K].t()).to(edt).sub_(err_BK * scale).to(dx)
        if ctx.ws is not None:
            ctx.ws.give(("bwd", ctx.key), scratch)
            ctx.ws.give(("fwd", ctx.key), bufs)
        return gx, gWe, gbe, gWd, gbd, None, None, None, None, None


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
        self._scratch = _Scratch()  # reused buffers of the dense L1 step (not state)

    def _apply(self, *args, **kwargs):  # .to() / .float() / ...: drop buffers of the old device or dtype
        self._scratch = _Scratch()
        return super()._apply(*args, **kwargs)

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
            return self._forward_l1(x_BK, sparsity_coef)
        pre_BL = torch.addmm(self.b_enc, x_BK, self.W_enc)
        theta_L = self.log_threshold.exp()
        eps = self.cfg.jumprelu_bandwidth
        f_BL = _JumpReLU.apply(pre_BL, theta_L.to(pre_BL.dtype), eps)
        sparsity = _Step.apply(pre_BL, theta_L.to(pre_BL.dtype), eps).sum(-1).mean()
        x_hat_BK = torch.addmm(self.b_dec, f_BL, self.W_dec)
        recon = (x_hat_BK.float() - x_BK.float()).pow(2).sum(-1).mean()
        loss = recon + sparsity_coef * sparsity.float()
        with torch.no_grad():
            n_active_L = torch.count_nonzero(f_BL, dim=0)  # one pass for both firing and L0
            fired_L, l0 = n_active_L > 0, n_active_L.sum().float() / f_BL.shape[0]
        return TrainOutput(loss, {"recon": recon.detach(), "sparsity": sparsity.detach().float()},
                           x_hat_BK, fired_L, l0)

    def _forward_l1(self, x_BK: Tensor, sparsity_coef: float) -> TrainOutput:
        """ReLU + decoder-norm-weighted L1 through `_DenseL1` (bf16 GEMMs under autocast)."""
        dev = x_BK.device.type
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.W_enc.dtype
        lease: list = []
        recon, sparsity, x_hat_BK, f_BL = _DenseL1.apply(
            x_BK, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.penalty, self.cfg.n_models * self.cfg.n_hooks,
            cdt, self._scratch, lease)
        loss = recon + sparsity_coef * sparsity
        B = x_BK.shape[0]

        def l0() -> Tensor:  # counted only when logged (a full pass over [B, L])
            _check_stamp(lease[0], "l0()")
            return torch.count_nonzero(f_BL).float() / B

        def fired_L() -> Tensor:  # from the backward's GEMM once it has run, else one pass over f
            _check_stamp(lease[0], "fired_L()")
            got = lease[0][2].get("fired")
            return got[1] if got is not None and got[0] == lease[0][1] else f_BL.sum(0) > 0

        return TrainOutput(loss, {"recon": recon.detach(), "sparsity": sparsity.detach()}, x_hat_BK, fired_L, l0)

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
