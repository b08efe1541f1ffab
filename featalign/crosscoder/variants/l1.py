"""`l1`: ReLU latents with a decoder-norm-weighted L1 penalty (Anthropic's crosscoder), trained
through one fused autograd function (`_DenseL1`) that keeps the step at the dense-GEMM rate.

Penalty: sum_l f_l · penalty_l · sum_n ||W_dec[l, n]|| over the (model, hook) blocks n; the first
`n_shared` latents are designated shared and get `shared_penalty` (Anthropic's 2025 update).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from featalign.crosscoder.variants.base import TrainOutput, Variant, VariantConfig, help_field, register


@dataclass
class L1Config(VariantConfig):
    """The L1 penalty's per-latent weights (the penalty coefficient itself is the trainer's `sparsity_coef`)."""

    n_shared: int = help_field(0, "designated shared latents (the first n_shared) with a lower L1 penalty")
    shared_penalty: float = help_field(0.15, "penalty multiplier of the designated shared latents")

    def validate(self, cc) -> None:
        if not 0 <= self.n_shared <= cc.n_latents:
            raise ValueError(f"n_shared={self.n_shared} must be in 0..n_latents={cc.n_latents}")


# pad the augmented inner dimension (K inputs + the bias/penalty column) to a multiple of 8 with
# zeros: bf16 GEMMs with an odd inner size run well below the aligned rate (figures in docs/crosscoder.md,
# Performance); the padding's extra FLOPs are not counted as useful work
_PAD = 8


def _check_stamp(lease: tuple, what: str) -> None:
    stamp, n = lease[:2]
    if stamp[0] != n:
        raise RuntimeError(
            f"{what} of an l1 training_forward whose buffers a later training_forward has reused; "
            "run backward (and read l0) before the next training_forward"
        )


class _DenseL1(torch.autograd.Function):
    """The tensor work of a dense L1 (ReLU) step in one function:

        f = relu(x W_enc + b_enc),  x_hat = f W_dec + b_dec,
        recon = sum((x_hat - x)^2) / B,  sparsity = sum(f · w) / B,  w_l = penalty_l · sum_n ||W_dec[l, n]||

    (n: the (model, hook) blocks), plus f itself (L0 when logged); which latents fired comes out
    of the backward (see `fired` below). Inputs are cast once to the compute dtype `cdt` (bf16 under autocast, fp32
    master
    weights; gradients come back in the inputs' dtypes). It replaces autograd's graph, which spent
    ~half of a bf16 step outside the GEMMs (docs/crosscoder.md, Performance). Each [B, L] piece
    of work is one GEMM or one elementwise pass:

    * the encoder bias rides in the encoder GEMM (`[x, 1] @ [W_enc; b_enc]`); its gradient comes
      out of the weight-gradient GEMM;
    * the penalty rides in the decoder GEMM as an extra column (`f @ [W_dec | w]`): its value is
      the last output column; its gradient w.r.t. f (w broadcast over the batch) folds into the
      `g @ [W_dec | w]^T` GEMM, and w.r.t. w it is the last column of the decoder
      weight-gradient GEMM. Autograd's path added a [B, L] broadcast after the GEMM;
    * the ReLU mask is applied in place with `threshold_backward`, one pass, where
      `masked_fill_(f <= 0, 0)` needs a comparison pass and is an order of magnitude slower;
    * the decoder norms' gradient (d sum_n ||W_n|| / dW = W / ||W||) is added to the GEMM's
      weight gradient in the same pass that casts it to fp32 (`addcmul`), instead of autograd's
      four passes over [L, K];
    * the reconstruction error is formed once (fp32) and its gradient written straight into the
      GEMM operand;
    * [B, L] buffers are reused across steps (`Variant.scratch`).
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
            return {
                "xa": xa_BKp,
                "Wa": torch.zeros(Kp, L, dtype=cdt, device=dev),
                "Wd": torch.zeros(L, Kp, dtype=cdt, device=dev),
                "f": torch.empty(B, L, dtype=cdt, device=dev),
                "out": torch.empty(B, Kp, dtype=cdt, device=dev),
                "err": torch.empty(B, K, dtype=edt, device=dev),
                "stamp": [0],
            }

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
        # a [B, L] fill for f on every step
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
        if dev.type == "cpu":  # a Python scalar: a 0-d tensor into the bf16 view is several times slower
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
            # firing for free: a separate column-sum pass over f would be a few percent of a bf16 step
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
                # reduced precision: the [L, Kp] orientation of this GEMM is faster in bf16, and the
                # cast to the weights' dtype has to copy anyway
                gWa_LKp = torch.mm(g_BL.t(), xa_BKp)
                gWe = torch.empty(K, L, dtype=dWe, device=dev).copy_(gWa_LKp[:, :K].t()) if need[1] else None
                gbe = gWa_LKp[:, K].to(dbe) if need[2] else None
            if need[0]:  # through the encoder, and directly through the error (x_hat - x)
                gx = torch.mm(g_BL, Wa_KpL[:K].t()).to(edt).sub_(err_BK * scale).to(dx)
        if ctx.ws is not None:
            ctx.ws.give(("bwd", ctx.key), scratch)
            ctx.ws.give(("fwd", ctx.key), bufs)
        return gx, gWe, gbe, gWd, gbd, None, None, None, None, None


@register
class L1(Variant):
    """ReLU + decoder-norm-weighted L1. State: the per-latent `penalty` buffer [L]."""

    name = "l1"
    Config = L1Config
    cfg: L1Config
    penalty: Tensor  # buffer [L]

    def __init__(self, cc_cfg, cfg: L1Config):
        super().__init__(cc_cfg, cfg)
        penalty_L = torch.ones(cc_cfg.n_latents)
        penalty_L[: cfg.n_shared] = cfg.shared_penalty
        self.register_buffer("penalty", penalty_L)

    def activation_for(self, cc, latents: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        return F.relu

    def jumprelu_threshold(self, cc) -> None:
        return None  # plain ReLU: sae_lens' "standard" SAE

    def training_forward(self, cc, x_BK: Tensor, sparsity_coef: float) -> TrainOutput:
        """Through `_DenseL1` (bf16 GEMMs under autocast)."""
        dev = x_BK.device.type
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else cc.W_enc.dtype
        lease: list = []
        recon, sparsity, x_hat_BK, f_BL = _DenseL1.apply(
            x_BK,
            cc.W_enc,
            cc.b_enc,
            cc.W_dec,
            cc.b_dec,
            self.penalty,
            cc.cfg.n_models * cc.cfg.n_hooks,
            cdt,
            self.scratch,
            lease,
        )
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
