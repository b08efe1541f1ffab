"""Feature interventions on a live model at a crosscoder's hook point(s): ablate, project, clamp, scale, steer.

Every edit is a change of the residual stream along crosscoder decoder directions, in raw
(un-normalised) activation space, at the hook(s) the crosscoder was trained on:

- `ablate(S)`:         x' = x - sum_{k in S} f_k(x) d_{k,m}           (the reconstruction error is kept)
- `project(S)`:        x' = x - P_S x  where some f_k(x) > 0, k in S    (P_S: projector on span{d_{k,m}})
- `clamp(S, v)`:       x' = x + sum_{k in S} (v - f_k(x)) d_{k,m}
- `scale(S, c)`:       x' = x + sum_{k in S} (c - 1) f_k(x) d_{k,m}
- `steer(S, coef, a)`: x' = x + coef * sum_{k in S} a_k d_{k,t}     (t = `decoder`, default m)

`m` is the hooked model's slot in the crosscoder (`model_name`), `d_{k,m}` latent k's decoder
row for that model and hook, divided by the crosscoder's `norm_scale` so that it lives in raw space
(`Crosscoder.decode` is affine: decode(f) - decode(0) = sum_k f_k d_k). `a_k` is the latent's
typical activation (see `typical_activation`), so `coef` is in units of "how strongly the feature
usually fires".

**How f_k(x) is computed from one live model.** With `Crosscoder.encode_as(x, model_name, hook,
latents)`, the one rule featalign uses for "model m's latents" everywhere: the success scores that
select features, their typical activations, the firing rates that match the controls and the edits
here all read the same f_k, so an ablation removes exactly the contribution the selection scored.
It is a function of the activation being edited only (a model that is not running cannot change an
edit), computed for the selected latents only, and with several hooks each hook is edited from its
own activation as it arrives (later hooks do not exist yet when an earlier one fires). Why this rule
and not m's encoder slot alone: docs/crosscoder.md, "Reading one model's latents". Ablation removes
`f_k d_k` and leaves the remainder, including the reconstruction error, untouched.

**Why `project` too.** A crosscoder reconstructs a large, rare output only in part (BatchTopK's few latents, the
shrinkage of an L1 one), so after `ablate` the error term still carries much of it along the very decoder
directions; when the model's use of that output saturates, the ablation then changes nothing. `project` removes
the activation's whole component in the span of the latents' decoder rows, at the positions where any of them
fires (and nowhere else): the directional ablation of the steering literature, localised by the crosscoder.

**Positions.** `positions="all" | "prompt" | "last" | "generated"`. A forward call over more than one token
(or the first call inside the context) starts a new sequence; its tokens are the prompt (unless
`prompt_len` is given, then columns < `prompt_len` are the prompt). One-token calls after it are KV-
cache generation steps, i.e. generated positions. This matches `featalign.generation.decode`
(left-padded prompts in one call, then one token per call) and a full forward over prompt +
completion with `prompt_len` set. `"last"` is the prompt's last column only: the position that predicts the
first answer token (the one `SuccessConfig(positions="last")` scores), so a steer there adds its direction
exactly where a feature read at the answer position would have fired, and nowhere else.

The edits go through `featalign.models.edit_hooks` at the crosscoder's hook names (any TransformerLens
name a crosscoder can be trained on: `hook_resid_pre/post`, `hook_attn_out`, `hook_mlp_out`, several at
once). Those hook points sit inside the Hugging Face model the TransformerBridge wraps, so `decode`,
`score_problems`, bridge and HF forward calls all see the edit, including KV-cache steps. The model
must be loaded with `featalign.models.load_model`.

Example::

    with intervene(rl_model, crosscoder, "rl", ablate(rl_success_ids)):
        correct = score_problems(rl_model, tok, problems)
    a = typical_activation(crosscoder, acts_NMHD, ids)
    with intervene(base_model, crosscoder, "base", steer(ids, 4.0, a, decoder="rl"), positions="prompt"):
        ...
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from featalign.crosscoder.model import Crosscoder
from featalign.models import edit_hooks, hf_model_of

POSITIONS = ("all", "prompt", "last", "generated")
KINDS = ("ablate", "project", "clamp", "scale", "steer")


@dataclass(frozen=True)
class Edit:
    """One feature edit; build it with `ablate`, `project`, `clamp`, `scale` or `steer`."""

    kind: str
    features: tuple[int, ...]
    value: float | Tensor = 0.0  # clamp: target value(s); scale: factor(s); steer: coefficient
    typical: Tensor | None = None  # steer: a_k per feature
    decoder: str | None = None  # steer: whose decoder directions (default: the hooked model)


def as_feature_ids(features) -> tuple[int, ...]:
    """Feature ids from a list / tensor of integers or a bool mask, each id once.

    The one validation of every entry point that takes features: a float id (1.7) is refused rather
    than truncated, a repeated id rather than edited twice (ablate([3, 3]) would subtract latent 3
    twice), a list of bools rather than read as ids 0/1 (pass a bool tensor for a mask)."""
    if isinstance(features, Tensor):
        if features.dtype == torch.bool:
            features = features.nonzero().flatten()
        features = features.flatten().tolist()
    elif isinstance(features, (int, float)) or not hasattr(features, "__iter__"):
        features = [features]
    ids = []
    for k in features:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ValueError(
                f"feature ids must be integers, got {k!r} ({type(k).__name__}); "
                "pass latent indices (or a bool tensor mask)"
            )
        ids.append(int(k))
    dup = sorted({k for k in ids if ids.count(k) > 1})
    if dup:
        raise ValueError(f"feature ids {dup[:10]} are given more than once; each latent can be edited once")
    return tuple(ids)


def _finite(value: float | Tensor, what: str) -> float | Tensor:
    """`value` (a scalar or per-feature values) if every entry is finite; NaN/inf would make every logit NaN."""
    if not torch.isfinite(torch.as_tensor(value, dtype=torch.float64)).all():
        raise ValueError(f"{what} must be finite, got {value!r}")
    return value


def ablate(features) -> Edit:
    """Remove the latents' decoded contribution, keeping the reconstruction error."""
    return Edit("ablate", as_feature_ids(features))


def project(features) -> Edit:
    """Where any of the latents fires, remove the activation's component in the span of their decoder rows
    (what their reconstruction missed along those directions goes too; see the module docstring)."""
    return Edit("project", as_feature_ids(features))


def clamp(features, value: float | Tensor) -> Edit:
    """Set the latents to `value` (a scalar or one value per feature)."""
    return Edit("clamp", as_feature_ids(features), _finite(value, "clamp value"))


def scale(features, factor: float | Tensor) -> Edit:
    """Multiply the latents by `factor` (a scalar or one factor per feature)."""
    return Edit("scale", as_feature_ids(features), _finite(factor, "scale factor"))


def steer(features, coef: float, typical: Tensor | Sequence[float], decoder: str | None = None) -> Edit:
    """Add `coef * sum_k typical_k * d_{k,decoder}`; `typical` from `typical_activation`."""
    ids = as_feature_ids(features)
    typical = torch.as_tensor(typical, dtype=torch.float32).flatten()
    if typical.numel() != len(ids):
        raise ValueError(f"steer: {len(ids)} features but {typical.numel()} typical activations")
    if not torch.isfinite(typical).all():
        raise ValueError("steer: typical activations must be finite (a feature that never fires has none)")
    if not math.isfinite(float(coef)):
        raise ValueError(f"steer: coefficient must be finite, got {coef}")
    return Edit("steer", ids, float(coef), typical, decoder)


@torch.no_grad()
def typical_activation(
    crosscoder: Crosscoder, x_NMHD: Tensor, features, batch: int = 4096, model: str | None = None
) -> Tensor:
    """Mean of the nonzero activations of each feature on cached activations `[N, M, H, D]`: model
    `model`'s latents (`Crosscoder.encode_as` of its slice, the rule the edits use), or with
    `model=None` the joint encoding of the paired tokens. A feature that never fires gets NaN."""
    ids = torch.tensor(check_features(crosscoder, as_feature_ids(features)), dtype=torch.long)
    m = None if model is None else _slot(crosscoder, model, "model")
    dev = crosscoder.W_enc.device
    s = torch.zeros(len(ids), dtype=torch.float64)
    n = torch.zeros(len(ids), dtype=torch.float64)
    for i in range(0, x_NMHD.shape[0], batch):
        x = x_NMHD[i : i + batch].to(dev)
        f = crosscoder.encode(x)[:, ids.to(dev)] if m is None else crosscoder.encode_as(x[:, m], m, latents=ids.to(dev))
        s += f.sum(0).double().cpu()
        n += (f != 0).sum(0).double().cpu()
    return (s / n).float()  # 0/0 -> NaN for never-firing features


def check_features(crosscoder: Crosscoder, ids: tuple[int, ...]) -> tuple[int, ...]:
    """`ids` if every one is a latent of `crosscoder`; an id out of range would index another latent's row."""
    L = crosscoder.cfg.n_latents
    bad = [k for k in ids if not 0 <= k < L]
    if bad:
        raise ValueError(f"feature ids {bad[:10]} out of range: this crosscoder has latents 0..{L - 1}")
    return ids


def _slot(crosscoder: Crosscoder, name: str, what: str) -> int:
    models = crosscoder.cfg.models
    if name not in models:
        raise ValueError(f"{what} {name!r} is not one of the crosscoder's models {models}")
    return models.index(name)


class _Block:
    """The selected latents at one (model, hook): their encoding and raw-space decoder rows."""

    @torch.no_grad()
    def __init__(self, cc: Crosscoder, m: int, h: int, ids: Tensor, dec_m: int):
        self.encode = cc.encoder_as(m, hook=h, latents=ids)  # x_ND -> the selected latents (module docstring)
        self.d_SD = cc.W_dec_raw_LMHD[ids, dec_m, h]

    @torch.no_grad()
    def span_basis_DR(self) -> Tensor:
        """An orthonormal basis of the span of the decoder rows (R <= S columns; rows of zero norm add none)."""
        if self.d_SD.shape[0] == 0:
            return self.d_SD.new_zeros(self.d_SD.shape[1], 0)
        q_DS, r_SS = torch.linalg.qr(self.d_SD.double().T)
        keep = r_SS.diagonal().abs() > 1e-8 * max(float(r_SS.diagonal().abs().max()), 1e-30)
        return q_DS[:, keep].to(self.d_SD.dtype)


def _per_feature(value, n: int, device, dtype) -> Tensor:
    v = torch.as_tensor(value, dtype=dtype, device=device).flatten()
    if v.numel() not in (1, n):
        raise ValueError(f"expected a scalar or {n} values (one per feature), got {v.numel()}")
    return v


class _EditFn:
    """The function for one hook: `fn(activation_BTD) -> edited activation` (`featalign.models.edit_hooks`)."""

    @torch.no_grad()
    def __init__(self, cc: Crosscoder, m: int, h: int, edits: list[Edit], positions: str, prompt_len: int | None):
        self.positions, self.prompt_len = positions, prompt_len
        dev = cc.W_dec.device
        self.parts: list[tuple[Edit, _Block, Tensor | None]] = []
        for e in edits:
            ids = torch.tensor(e.features, dtype=torch.long, device=dev)
            dec_m = m if e.decoder is None else _slot(cc, e.decoder, "steer decoder")
            block = _Block(cc, m, h, ids, dec_m)
            extra = None
            if e.kind in ("clamp", "scale"):
                extra = _per_feature(e.value, len(ids), dev, cc.W_dec.dtype)
            elif e.kind == "project":
                extra = block.span_basis_DR()
            elif e.kind == "steer":
                assert e.typical is not None  # `steer` always sets it
                extra = (float(e.value) * e.typical.to(dev, cc.W_dec.dtype)) @ block.d_SD  # [D]
            self.parts.append((e, block, extra))
        self.offset: int | None = None  # tokens of the current sequence seen so far
        self.seq_prompt_len = 0

    def _delta(self, x_ND: Tensor) -> Tensor:
        delta = torch.zeros(x_ND.shape[0], x_ND.shape[1], dtype=self.parts[0][1].d_SD.dtype, device=x_ND.device)
        for e, block, extra in self.parts:
            if e.kind == "ablate":
                delta += -block.encode(x_ND) @ block.d_SD
                continue
            assert extra is not None  # __init__ sets it for every edit but ablate
            if e.kind == "project":
                fires_N = (block.encode(x_ND) > 0).any(-1, keepdim=True)
                delta += -torch.where(fires_N, (x_ND.to(extra.dtype) @ extra) @ extra.T, 0.0)
                continue
            if e.kind == "steer":
                delta += extra
                continue
            f = block.encode(x_ND)
            new_minus_f = extra - f if e.kind == "clamp" else (extra - 1) * f
            delta += new_minus_f @ block.d_SD
        return delta

    def _position_mask(self, T: int, device) -> Tensor | None:
        """Bool [T] of columns to edit in this call, or None for all of them."""
        if self.offset is None or T > 1:
            self.offset = 0
            self.seq_prompt_len = T if self.prompt_len is None else self.prompt_len
        cols = torch.arange(self.offset, self.offset + T, device=device)
        self.offset += T
        if self.positions == "all":
            return None
        if self.positions == "last":
            return cols == self.seq_prompt_len - 1
        is_prompt = cols < self.seq_prompt_len
        return is_prompt if self.positions == "prompt" else ~is_prompt

    def __call__(self, resid: Tensor) -> Tensor | None:
        B, T, D = resid.shape
        where = self._position_mask(T, resid.device)
        if not self.parts or (where is not None and not bool(where.any())):
            return None
        x = resid.reshape(B * T, D)
        delta = self._delta(x).to(resid.dtype).view(B, T, D)
        if where is None:
            return resid + delta
        return torch.where(where[None, :, None], resid + delta, resid)


def _check_hooks(crosscoder: Crosscoder, hooks: Sequence[str] | None) -> tuple[str, ...]:
    trained = crosscoder.cfg.hooks
    if hooks is None:
        return trained
    hooks = tuple(hooks)
    for hk in hooks:
        if hk not in trained:
            raise ValueError(f"hook {hk!r}: this crosscoder was trained on {trained}; it can only intervene there")
    return hooks


def _hidden_size(lm: torch.nn.Module) -> int | None:
    cfg = getattr(lm, "config", None)
    for attr in ("hidden_size", "n_embd", "d_model"):
        if cfg is not None and isinstance(getattr(cfg, attr, None), int):
            return getattr(cfg, attr)
    return None


def hook_fns(
    crosscoder: Crosscoder,
    model_name: str,
    edits: Edit | Sequence[Edit],
    positions: str = "all",
    hooks: Sequence[str] | None = None,
    prompt_len: int | None = None,
) -> dict[str, Callable[[Tensor], Tensor | None]]:
    """Hook factory: {hook name: fn(activation [B, T, D]) -> edited activation or None}, for
    `featalign.models.edit_hooks` or any hook mechanism that passes that activation. Validates every input.
    Several edits are summed, each computed from the unedited activation."""
    edits = [edits] if isinstance(edits, Edit) else list(edits)
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if prompt_len is not None and prompt_len < 0:
        raise ValueError(f"prompt_len must be >= 0, got {prompt_len}")
    m = _slot(crosscoder, model_name, "model")
    for e in edits:
        if not isinstance(e, Edit) or e.kind not in KINDS:
            raise TypeError(f"edits must be built with ablate/project/clamp/scale/steer, got {e!r}")
        check_features(crosscoder, as_feature_ids(e.features))  # an Edit built by hand is checked like ablate/clamp/...
        if e.kind in ("clamp", "scale"):
            _finite(e.value, f"{e.kind} value")
        if e.decoder is not None:
            _slot(crosscoder, e.decoder, "steer decoder")
    hooks = _check_hooks(crosscoder, hooks)
    return {hk: _EditFn(crosscoder, m, crosscoder.cfg.hooks.index(hk), edits, positions, prompt_len) for hk in hooks}


@dataclass
class LogitMonitor:
    """Counts of the model's output rows (one per sequence and position) seen while an
    `intervene` context was open, and how many of them held a NaN or infinite logit. A large
    steering coefficient can overflow the residual stream; greedy decoding would then silently
    emit garbage, so callers report `nonfinite_frac` instead."""

    rows: int = 0
    nonfinite_rows: int = 0

    @property
    def nonfinite_frac(self) -> float:
        return self.nonfinite_rows / self.rows if self.rows else 0.0

    def __call__(self, module, args, output) -> None:
        logits = output.logits if hasattr(output, "logits") else output[0] if isinstance(output, tuple) else output
        if not isinstance(logits, Tensor):
            return
        self.rows += logits.shape[0] * logits.shape[1]
        self.nonfinite_rows += int((~torch.isfinite(logits)).any(-1).sum())


@contextmanager
def intervene(
    model: torch.nn.Module,
    crosscoder: Crosscoder,
    model_name: str,
    edits: Edit | Sequence[Edit],
    positions: str = "all",
    hooks: Sequence[str] | None = None,
    prompt_len: int | None = None,
) -> Iterator[LogitMonitor]:
    """Apply `edits` to `model` (a TransformerBridge from `featalign.models.load_model`) at the crosscoder's hooks
    (or the subset `hooks`) while the context is open; `model_name` is the model's slot in the
    crosscoder. Works for plain forwards, `featalign.generation.decode` and `score_problems`.
    Yields a `LogitMonitor` that counts output rows with non-finite logits."""
    lm = hf_model_of(model)
    width = _hidden_size(lm)
    if width is not None and width != crosscoder.cfg.d_model:
        raise ValueError(f"model width {width} does not match the crosscoder's d_model {crosscoder.cfg.d_model}")
    fns = hook_fns(crosscoder, model_name, edits, positions, hooks, prompt_len)
    monitor = LogitMonitor()
    with ExitStack() as stack:
        stack.enter_context(edit_hooks(model, fns))
        handle = lm.register_forward_hook(monitor)
        stack.callback(handle.remove)
        yield monitor
