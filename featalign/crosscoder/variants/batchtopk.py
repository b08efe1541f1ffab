"""`batchtopk`: the k·B largest decoder-norm-weighted activations of a batch are kept (Bussmann et al.
2024), with an aux-k loss that pulls quiet latents back (Gao et al. 2024); at inference a per-token
threshold (EMA of the smallest selected value) replaces the batch selection, so a token's latents
never depend on the batch it came in.

The training step is sparse: one dense encoder GEMM (without the bias), one comparison pass over it
to find the candidates (`select_batch_topk`), then the selected (token, latent) pairs only — decode
by `_SparseDecode`, encoder backward through `_GatherPre`, both grouped once by latent — so its cost
beyond the GEMM is O(k·B·K) plus that one pass, not O(B·L·K). `sparse_decode=False` runs the same
maths (the same selection) through dense matmuls: the reference the tests compare against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from featalign.crosscoder.variants.base import TrainOutput, Variant, VariantConfig, help_field, register


@dataclass
class BatchTopKConfig(VariantConfig):
    """Selection size, inference threshold and aux-k loss (`sparsity_coef` is not used)."""

    k: int = help_field(32, "mean active latents per token (the top k*B of the batch are kept)")
    sparse_decode: bool = help_field(
        True,
        "sparse decoder + encoder backward through the active latents only (false: dense reference path, same maths)",
    )
    threshold_ema: float = help_field(0.01, "EMA rate of the inference threshold")
    # 32, not 64 (and 64, not 256, before): equal recovery, attribution, FVU and dead fraction on the issue-13
    # planted benchmark at 4096 and 1024 latents, 21% less training time at 4096, where most latents are
    # quiet and the aux pairs (aux_k per token) outnumbered the k selected ones (docs/crosscoder.md,
    # BatchTopK quality)
    aux_k: int = help_field(32, "quiet latents per token in the auxiliary (aux-k) loss")
    aux_coef: float = help_field(1.0, "weight of the aux-k loss (sae_lens's default; scaled by min(n_dead / aux_k, 1))")
    # a few batches, not dead_tokens (~100 steps at batch 2048): the aux loss then reaches unused latents
    # from the first steps (attribution 0.955 -> 1.0 on the planted benchmark; docs/crosscoder.md)
    aux_dead_tokens: int = help_field(
        8192,
        "the aux-k loss trains latents that have not fired for more than this many tokens "
        "(0: the crosscoder's dead_tokens, i.e. only latents already counted dead)",
    )

    def validate(self, cc) -> None:
        if not 0 < self.k <= cc.n_latents:
            raise ValueError(f"k={self.k} must be in 1..n_latents={cc.n_latents}")
        if self.aux_dead_tokens < 0:
            raise ValueError(
                f"aux_dead_tokens ({self.aux_dead_tokens}) must be >= 0 (0 = the crosscoder's dead_tokens)"
            )
        if self.aux_k < 1 or not 0 < self.threshold_ema <= 1:
            raise ValueError(f"aux_k ({self.aux_k}) must be >= 1 and threshold_ema ({self.threshold_ema}) in (0, 1]")


class _GatherPre(torch.autograd.Function):
    """`P[rows, cols] + b_enc[cols]` where P = x @ W_enc (the pre-activations of the selected pairs),
    with a backward that touches only those entries.

    The dense backward of the encoder costs 2·B·K·L FLOPs; through nnz = k·B active latents it
    costs 2·nnz·K. The weight gradient is an `embedding_bag` over the active (row, col) pairs
    grouped by latent (faster than `torch.sparse.mm` and `index_add_` on CPU).
    """

    @staticmethod
    def forward(ctx, pre_flat, flat_idx, x_BK, W_enc_KL, b_enc_L, rows, cols, grouping=None):
        ctx.save_for_backward(x_BK, W_enc_KL, rows, cols)
        ctx.L, ctx.grouping, ctx.b_dtype = b_enc_L.shape[0], grouping, b_enc_L.dtype
        return pre_flat[flat_idx] + b_enc_L.to(pre_flat.dtype)[cols]

    @staticmethod
    def backward(ctx, g_N):
        x_BK, W_enc_KL, rows, cols = ctx.saved_tensors
        L, b_enc_dtype = ctx.L, ctx.b_dtype
        g_N = g_N.to(x_BK.dtype)
        gW = gb = gx = None
        order, offsets_L = ctx.grouping if ctx.grouping is not None else by_latent(cols, L)
        if ctx.needs_input_grad[3]:
            gW_LK = F.embedding_bag(rows[order], x_BK, offsets_L, mode="sum", per_sample_weights=g_N[order])
            # one copy casts to the weights' dtype and transposes to W_enc's [K, L] layout (Adam would
            # make the transposed view contiguous anyway)
            gW = torch.empty(W_enc_KL.shape, dtype=W_enc_KL.dtype, device=gW_LK.device).copy_(gW_LK.t())
        if ctx.needs_input_grad[4]:
            gb = torch.bincount(cols, weights=g_N.float(), minlength=L).to(b_enc_dtype)
        if ctx.needs_input_grad[2]:
            B = x_BK.shape[0]
            counts_B = torch.bincount(rows, minlength=B)
            gx = F.embedding_bag(
                cols, W_enc_KL.t(), torch.cumsum(counts_B, 0) - counts_B, mode="sum", per_sample_weights=g_N
            )
        return None, None, gx, gW, gb, None, None, None


def by_latent(cols: Tensor, L: int) -> tuple[Tensor, Tensor]:
    """(order, offsets [L]): the pairs grouped by latent, for the weight gradients' `embedding_bag`s."""
    order = torch.argsort(cols, stable=True)
    counts_L = torch.bincount(cols, minlength=L)
    return order, torch.cumsum(counts_L, 0) - counts_L


class _SparseDecode(torch.autograd.Function):
    """`b_dec + sum_n vals_n W_dec[cols_n]` per token (pairs in row-major order, `offsets_B` per token).

    Hand-written rather than autograd's `embedding_bag`: autograd's weight gradient is a dense
    backward that zero-fills [L, K] and scatters; here it is one forward-only `embedding_bag` of the
    output gradient grouped by latent (the grouping shared with the encoder's backward), and the
    activations' gradient is aten's per-sample-weights kernel (one dot product per pair).
    """

    @staticmethod
    def forward(ctx, vals_N, W_dec_LK, b_dec_K, rows, cols, offsets_B, grouping):
        v = vals_N.to(W_dec_LK.dtype)
        ctx.save_for_backward(v, W_dec_LK, rows, cols, offsets_B)
        ctx.grouping, ctx.vdt = grouping, vals_N.dtype
        out = F.embedding_bag(cols, W_dec_LK, offsets_B, mode="sum", per_sample_weights=v)
        return out if b_dec_K is None else out + b_dec_K

    @staticmethod
    def backward(ctx, g_BK):
        v, W_dec_LK, rows, cols, offsets_B = ctx.saved_tensors
        g_BK = g_BK.to(W_dec_LK.dtype).contiguous()
        gv = gW = gb = None
        order, offsets_L = ctx.grouping if ctx.grouping is not None else by_latent(cols, W_dec_LK.shape[0])
        rows_o = rows[order]
        if ctx.needs_input_grad[0]:
            # one dot product per pair, g[row]·W_dec[col], taken in latent order (W_dec's rows as the
            # "bags", g's rows gathered): each decoder row is read once and the gathered rows come from
            # g, which is smaller than W_dec and stays in cache (token order read W_dec's rows at random)
            gv_o = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                W_dec_LK, g_BK, rows_o, offsets_L, cols[order], 0, -1
            )
            gv = torch.empty_like(gv_o).index_copy_(0, order, gv_o).to(ctx.vdt)
        if ctx.needs_input_grad[1]:
            gW = F.embedding_bag(rows_o, g_BK, offsets_L, mode="sum", per_sample_weights=v[order])
        if ctx.needs_input_grad[2]:
            gb = g_BK.sum(0)
        return gv, gW, gb, None, None, None, None


def mask_nonzero(mask: Tensor) -> Tensor:
    """`mask.view(-1).nonzero()` as a 1-D index tensor, for a sparse bool mask.

    `nonzero` over the B·L bytes was the largest pass of the selection after the GEMM; reading the mask
    as int64 words first finds the few words with any true byte, and only those words' bytes are
    expanded (the same indices, in the same ascending order).
    """
    flat = mask.reshape(-1)
    if flat.numel() % 8 or not flat.is_contiguous() or flat.device.type != "cpu":
        return flat.nonzero().squeeze(1)
    words = flat.view(torch.int64).nonzero().squeeze(1)
    j = flat.view(-1, 8)[words].view(-1).nonzero().squeeze(1)
    return words[j // 8] * 8 + j % 8


def candidate_bound(P_BL: Tensor, b_L: Tensor, w_L: Tensor, n: int, sample_rows: int = 64) -> float:
    """A score bound with about 1.3·n of the batch's `relu(P + b)·w` entries above it, read off a strided
    sample of rows (0.0 when the sample says fewer than that are positive).

    Only a speed hint: `select_batch_topk` is exact whatever it returns. The sampled quantile sits a few
    binomial standard deviations below the n-th value, so the candidate set is rarely short of n; a
    batch whose rows are not exchangeable (sorted, not shuffled) only costs the fallback.
    """
    B, L = P_BL.shape
    step = max(1, B // sample_rows)
    S_sL = P_BL[::step][:sample_rows]
    s = S_sL.shape[0]
    expected = n * s / B  # selected entries expected in the sample
    r = int(1.25 * expected + 3 * expected**0.5) + 1
    if r >= s * L:
        return 0.0
    v = (S_sL + b_L.to(P_BL.dtype)).clamp_min_(0).mul_(w_L.to(P_BL.dtype)).view(-1)
    return float(v.topk(r, sorted=False).values.min())


def select_batch_topk(P_BL: Tensor, b_L: Tensor, w_L: Tensor, n: int, bound: float | None = None) -> Tensor:
    """Flat row-major-sorted indices of the n largest `relu(P + b) · w` entries (exact top n; the
    selection both training paths use, so that they select the same pairs).

    `P_BL` is the encoder GEMM *without* the bias: adding it would be a pass over [B, L]. Hand-written
    because after the GEMM every pass over the B·L entries counts: with a candidate bound c (default
    `candidate_bound`: a sampled quantile just below the n-th value) the candidates are found by one
    comparison pass, `P > c / w − b` (w > 0, so `relu(P + b)·w > c` exactly there), and `nonzero`;
    their scores are computed on the candidates only, and the n-th largest by `kthvalue` on them; the
    candidates are already in row-major order, so keeping those >= it needs no sort. A bound that
    leaves fewer than n candidates falls back to half of it, then to a full topk, so the result never
    depends on the bound. Ties at the n-th value go through topk.
    """
    B, L = P_BL.shape
    w_L = w_L.to(P_BL.dtype)
    if n < B * L:
        c0 = candidate_bound(P_BL, b_L, w_L, n) if bound is None else bound
        for c_bound in (c0, 0.5 * c0) if c0 > 0 else ():
            t_L = c_bound / w_L.float() - b_L.float()
            cand = mask_nonzero(P_BL > t_L.to(P_BL.dtype))
            c = cand.numel()
            if c < n:
                continue
            col = cand % L
            v = (P_BL.view(-1)[cand] + b_L.to(P_BL.dtype)[col]).clamp_min_(0) * w_L[col]
            if c == n:
                return cand
            kth = v.float().kthvalue(c - n + 1).values.to(v.dtype)
            keep = v >= kth
            if int(keep.sum()) == n:
                return cand[keep]
            return cand[v.topk(n, sorted=False).indices].sort().values
    v = (P_BL + b_L.to(P_BL.dtype)).clamp_min_(0).mul_(w_L).view(-1)
    return v.topk(min(n, B * L), sorted=False).indices.sort().values


@dataclass
class Selection:
    """The batch's selected (token, latent) pairs in row-major order, their activations (carrying the
    encoder's gradient) and the encoder GEMM without bias `x @ W_enc` (detached) for the aux loss."""

    rows: Tensor
    cols: Tensor
    vals: Tensor
    P_BL: Tensor  # the sparse path's is scratch (`BatchTopK._encoder_gemm`), valid until `_finish`
    min_selected: Tensor  # smallest selected norm-weighted activation (NaN if nothing fired)
    grouping: tuple[Tensor, Tensor] | None = None  # `by_latent(cols)`, shared by the backward passes


def compute_dtype(t: Tensor) -> torch.dtype:
    """The sparse step's gather dtype: the autocast dtype under autocast (the gathers are memory-bound,
    so bf16 halves their traffic; weights stay fp32 masters and get fp32 gradients), else `t`'s."""
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


def decode_selected(cc, sel: Selection, keep: Tensor | None = None) -> Tensor:
    """b_dec + sum of the selected latents' decoder rows (only the entries where `keep` is true)."""
    rows, cols, vals, grouping = sel.rows, sel.cols, sel.vals, sel.grouping
    if keep is not None:
        rows, cols, vals, grouping = rows[keep], cols[keep], vals[keep], None
    B = sel.P_BL.shape[0]
    counts_B = torch.bincount(rows, minlength=B)
    offsets_B = torch.cumsum(counts_B, 0) - counts_B
    W_dec = cc.W_dec.to(compute_dtype(cc.W_dec))
    return _SparseDecode.apply(vals, W_dec, cc.b_dec, rows, cols, offsets_B, grouping)


def _gemm_key(B: int, L: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """`Variant.scratch` key of the encoder GEMM's kept [B, L] output."""
    return ("encoder_gemm", B, L, dtype, device)


def _min_selected(s: Tensor) -> Tensor:
    return s.min().double() if s.numel() else torch.tensor(float("nan"), dtype=torch.float64, device=s.device)


@register
class BatchTopK(Variant):
    """State: the inference `threshold` (a float64 scalar buffer, EMA of the smallest selected value)."""

    name = "batchtopk"
    Config = BatchTopKConfig
    resample_encoder_scale = 1.0
    cfg: BatchTopKConfig
    threshold: Tensor  # buffer, float64 scalar

    def __init__(self, cc_cfg, cfg: BatchTopKConfig):
        super().__init__(cc_cfg, cfg)
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))

    def activation_for(self, cc, latents: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        w = cc.dec_norm_sum()
        w = w if latents is None else w[latents]
        threshold = self.threshold

        def act_fn(pre_BS: Tensor) -> Tensor:
            act = F.relu(pre_BS)
            return act * (act * w.to(act.dtype) > threshold.to(act.dtype))

        return act_fn

    def jumprelu_threshold(self, cc) -> Tensor:
        """relu(pre) · w_l > t  <=>  pre > t / w_l (for w_l > 0): the per-token threshold t on norm-weighted
        activations is a per-latent JumpReLU threshold on the pre-activation. A latent with w_l = 0 never
        fires when t >= 0 (θ = inf) and is plain ReLU when t < 0 (θ = -inf)."""
        w_L = cc.dec_norm_sum().detach()
        t = self.threshold.to(w_L.dtype)
        never = torch.full_like(w_L, float("inf") if t >= 0 else float("-inf"))
        return torch.where(w_L > 0, t / w_L.clamp_min(torch.finfo(w_L.dtype).tiny), never)

    def _indices(self, cc, P_BL: Tensor, w_L: Tensor) -> Tensor:
        B, L = P_BL.shape
        return select_batch_topk(P_BL, cc.b_enc.detach(), w_L, min(self.cfg.k * B, B * L))

    def _encoder_gemm(self, x_BK: Tensor, W_enc_KL: Tensor) -> Tensor:
        """`x @ W_enc` (no grad), written into the step's scratch output (`_finish` hands it back).

        Why kept: at issue 13's size in fp32 this [B, L] output (32 MiB) is the step's one allocation above
        glibc's largest mmap threshold, so a fresh one is mapped and page-faulted through every step. The
        inputs are cast to the autocast dtype by hand, as autocast would (it does not touch `out=` calls)."""
        cdt = compute_dtype(x_BK)
        key = _gemm_key(x_BK.shape[0], W_enc_KL.shape[1], cdt, x_BK.device)
        out = self.scratch.take(key, lambda: {"P": torch.empty(key[1:3], dtype=cdt, device=x_BK.device)})["P"]
        return torch.mm(x_BK.to(cdt), W_enc_KL.to(cdt), out=out)

    def select(self, cc, x_BK: Tensor) -> Selection:
        """The batch top-k·B on norm-weighted activations, sparse (gradient through `_GatherPre`)."""
        L = cc.cfg.n_latents
        w_L = cc.dec_norm_sum().detach()
        with torch.no_grad():
            P_BL = self._encoder_gemm(x_BK, cc.W_enc)
            flat_idx = self._indices(cc, P_BL, w_L)
            rows = flat_idx // L
            cols = flat_idx - rows * L
            grouping = by_latent(cols, L)
        x_c = x_BK.to(compute_dtype(x_BK))
        vals = F.relu(_GatherPre.apply(P_BL.view(-1), flat_idx, x_c, cc.W_enc, cc.b_enc, rows, cols, grouping))
        with torch.no_grad():
            sel = vals * w_L[cols].to(vals.dtype)
            min_sel = _min_selected(sel[vals > 0])
        return Selection(rows, cols, vals, P_BL, min_sel, grouping)

    def _finish(
        self, cc, x_BK: Tensor, x_hat_BK: Tensor, recon: Tensor, sel: Selection, fired_L, l0, parts: dict | None = None
    ) -> TrainOutput:
        aux = self.aux_loss(cc, x_BK, x_hat_BK, sel.P_BL)
        if sel.grouping is not None:  # the sparse path: P_BL is the scratch output, and nothing reads it again
            P = sel.P_BL
            self.scratch.give(_gemm_key(P.shape[0], P.shape[1], P.dtype, P.device), {"P": P})
        loss = recon + self.cfg.aux_coef * aux
        return TrainOutput(
            loss,
            {"recon": recon.detach(), **(parts or {}), "aux": aux.detach()},
            x_hat_BK,
            fired_L,
            l0,
            {"min_selected": sel.min_selected},
        )

    def training_forward(self, cc, x_BK: Tensor, sparsity_coef: float = 0.0) -> TrainOutput:
        if self.cfg.sparse_decode:
            sel = self.select(cc, x_BK)
            x_hat_BK = decode_selected(cc, sel)
            with torch.no_grad():
                pos = sel.vals > 0
                fired_L = torch.zeros(cc.cfg.n_latents, dtype=torch.bool, device=x_BK.device)
                fired_L[sel.cols[pos]] = True
                l0 = pos.sum().float() / x_BK.shape[0]
        else:  # dense reference: identical maths (the same selection) through full matmuls
            B, L = x_BK.shape[0], cc.cfg.n_latents
            w_L = cc.dec_norm_sum().detach()
            P_BL = torch.mm(x_BK, cc.W_enc)
            act_BL = F.relu(P_BL + cc.b_enc.to(P_BL.dtype))
            with torch.no_grad():
                flat_idx = self._indices(cc, P_BL.detach(), w_L)
                mask = torch.zeros(B * L, dtype=act_BL.dtype, device=x_BK.device).index_fill_(0, flat_idx, 1)
            f_BL = act_BL * mask.view(B, L)
            x_hat_BK = torch.addmm(cc.b_dec, f_BL, cc.W_dec)
            with torch.no_grad():
                active = f_BL > 0
                fired_L, l0 = active.any(0), active.sum().float() / B
                min_sel = _min_selected((f_BL * w_L.to(f_BL.dtype))[active])
            sel = Selection(torch.empty(0), torch.empty(0), torch.empty(0), P_BL.detach(), min_sel)
        recon = (x_hat_BK.float() - x_BK.float()).pow(2).sum(-1).mean()
        return self._finish(cc, x_BK, x_hat_BK, recon, sel, fired_L, l0)

    def aux_mask(self, cc) -> Tensor:
        """bool [L]: the latents the aux-k loss trains (quiet for more than `aux_dead_tokens`)."""
        t = self.cfg.aux_dead_tokens
        return cc.dead_mask() if t == 0 else cc.tokens_since_fired > t

    def aux_loss(self, cc, x_BK: Tensor, x_hat_BK: Tensor, P_BL: Tensor) -> Tensor:
        """Aux-k (Gao et al. 2024): the top aux_k quiet latents per token reconstruct the residual (no bias)."""
        dead_idx = self.aux_mask(cc).nonzero().squeeze(-1)
        if dead_idx.numel() == 0:
            return torch.zeros((), device=x_BK.device)
        B, L = P_BL.shape
        kk = min(self.cfg.aux_k, dead_idx.numel())
        with torch.no_grad():
            # index_select, not P_BL[:, dead_idx]: a column gather through advanced indexing is ~4x slower
            top = (P_BL.index_select(1, dead_idx) + cc.b_enc[dead_idx].to(P_BL.dtype)).topk(kk, dim=-1, sorted=False)
            cols = dead_idx[top.indices].reshape(-1)
            rows = torch.arange(B, device=x_BK.device).repeat_interleave(kk)
            flat_idx = rows * L + cols
            grouping = by_latent(cols, L)
        # raw pre-activations, no ReLU: a dead latent's pre is usually negative everywhere, and the
        # gradient must still reach it (as in sae_lens / EleutherAI sparsify)
        cdt = compute_dtype(x_BK)
        vals = _GatherPre.apply(P_BL.reshape(-1), flat_idx, x_BK.to(cdt), cc.W_enc, cc.b_enc, rows, cols, grouping)
        e_hat_BK = _SparseDecode.apply(
            vals, cc.W_dec.to(cdt), None, rows, cols, torch.arange(B, device=x_BK.device) * kk, grouping
        )
        e_BK = (x_BK - x_hat_BK).detach().float()
        scale = min(dead_idx.numel() / self.cfg.aux_k, 1.0)  # weaker when few latents are dead
        return scale * (e_hat_BK.float() - e_BK).pow(2).sum(-1).mean()

    @torch.no_grad()
    def update(self, stats: dict[str, Tensor]) -> None:
        """EMA of the smallest selected activation: the inference threshold."""
        m = stats.get("min_selected")
        if m is None or not torch.isfinite(m):
            return
        m = m.to(self.threshold.dtype)
        if self.threshold.item() == 0.0:
            self.threshold.copy_(m)
        else:
            a = self.cfg.threshold_ema
            self.threshold.mul_(1 - a).add_(a * m)

    def log_row(self) -> dict[str, float]:
        return {"threshold": self.threshold.item()}
