"""The one place that maps hook names to modules: validation, the default middle layer, capture and edits.

Names are TransformerLens hook names (`blocks.{L}.hook_resid_pre/mid/post`, `blocks.{L}.hook_attn_out`,
`blocks.{L}.hook_mlp_out`, or any other name in the bridge's `hook_dict`). Each resolves, through the
TransformerBridge's aliases, to a `HookPoint` module that sits inside the Hugging Face model the bridge
wraps, so a hook fires whichever forward runs: the bridge's own, the HF model's, or `generation.decode`'s
KV-cache steps. That is why capture and edits need no per-architecture list of layer paths.

Capture runs the bridge's own forward with hooks on its HookPoints (so values equal
`run_with_cache` exactly) and `stop_at_layer` just past the deepest hooked block, which skips the
rest of the model; that is what puts caching at or above a bare HF forward's tokens/s.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge import TransformerBridge

#: f(activation_BTD) -> replacement, or None to leave the activation as it is (a read-only hook).
EditFn = Callable[[Tensor], "Tensor | None"]

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_PRE_BLOCK = ("hook_embed", "hook_pos_embed", "embed.", "pos_embed.", "rotary_emb.", "embed_ln.")


def hf_model_of(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face causal LM inside a TransformerBridge (or the model itself): the hook points
    live in it, so a plain HF forward (generation's KV-cache steps) fires them too."""
    return getattr(model, "original_model", model)


def default_hook(n_layers: int) -> str:
    """The residual stream after the first half of the blocks (`blocks.{n//2-1}.hook_resid_post`).

    The feature-level study aligns one middle residual layer; resid_post of block n/2-1 is
    exactly half-way through the network (layer 1 of the 4-layer default organisms).
    """
    return f"blocks.{max(n_layers // 2 - 1, 0)}.hook_resid_post"


def default_hook_for(model: str | Path | TransformerBridge) -> str:
    """`default_hook` of a loaded bridge, or of a model folder / hub id read from its config alone."""
    if hasattr(model, "cfg") and hasattr(model.cfg, "n_layers"):
        return default_hook(model.cfg.n_layers)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model))
    cfg = getattr(cfg, "text_config", None) or cfg  # multimodal configs keep the decoder's under text_config
    return default_hook(cfg.num_hidden_layers)


def resolve_hooks(bridge: TransformerBridge, hooks: Sequence[str]) -> list[str]:
    """Check every name exists on `bridge`; an unknown one raises with its closest matches."""
    if isinstance(hooks, str):
        hooks = [hooks]
    if not hooks:
        raise ValueError("no hook names given; e.g. hooks=['blocks.1.hook_resid_post']")
    if len(set(hooks)) != len(hooks):
        raise ValueError(f"duplicate hook names in {list(hooks)}")
    known = bridge.hook_dict
    for h in hooks:
        if h not in known:
            close = difflib.get_close_matches(h, list(known), n=6, cutoff=0.6)
            hint = f"close matches: {close}" if close else f"e.g. {default_hook(bridge.cfg.n_layers)!r}"
            raise KeyError(f"unknown hook name {h!r} for this model ({bridge.cfg.n_layers} blocks); {hint}")
    return list(hooks)


def stop_layer(hooks: Sequence[str], n_layers: int) -> int | None:
    """Blocks needed to reach every hook (for `stop_at_layer`), or None to run the whole model."""
    deepest = 0
    for h in hooks:
        m = _BLOCK_RE.match(h)
        if m:
            deepest = max(deepest, int(m.group(1)) + 1)
        elif not h.startswith(_PRE_BLOCK):
            return None  # ln_final / unembed / unknown position: run everything
    deepest = max(deepest, 1)
    return deepest if deepest < n_layers else None


def capture(
    bridge: TransformerBridge,
    tokens_BT: Int[Tensor, "B T"],
    attention_mask_BT: Int[Tensor, "B T"],
    hooks: Sequence[str],
) -> dict[str, Float[Tensor, "B T D"]]:
    """Activations at `hooks` for one padded batch, stopping after the deepest hooked block."""
    got: dict[str, Tensor] = {}

    def make_fn(name: str):
        def fn(x: Tensor, hook) -> None:
            # some modules see tokens flattened to [B*T, D] (OPT's fc2 = hook_mlp_out): back to [B, T, D]
            got[name] = x.detach().view(*tokens_BT.shape, -1) if x.ndim == 2 else x.detach()

        return fn

    with torch.inference_mode():
        bridge.run_with_hooks(
            tokens_BT,
            fwd_hooks=[(h, make_fn(h)) for h in hooks],
            attention_mask=attention_mask_BT,
            stop_at_layer=stop_layer(hooks, bridge.cfg.n_layers),
            return_type=None,
        )
    missing = [h for h in hooks if h not in got]
    if missing:
        raise RuntimeError(f"hooks {missing} did not fire during the forward pass; is the name a backward-only hook?")
    return got


def _bridge_of(model: torch.nn.Module) -> TransformerBridge:
    if not hasattr(model, "hook_dict"):
        raise TypeError(
            f"{type(model).__name__} has no TransformerLens hook points: load models with featalign.models.load_model "
            "(a TransformerBridge), which every featalign stage uses"
        )
    return model  # type: ignore[return-value]


def hook_point(model: torch.nn.Module, name: str) -> HookPoint:
    """The HookPoint module behind hook `name` (aliases such as `hook_resid_post` resolved by the bridge)."""
    bridge = _bridge_of(model)
    resolve_hooks(bridge, [name])
    return bridge.hook_dict[name]


def check_editable(model: torch.nn.Module, name: str) -> None:
    """Refuse hooks whose HookPoint does not carry the named activation forward.

    On TransformerBridge 3.9 `hook_resid_mid` is an alias of the MLP's layernorm *input* hook
    (`ln2.hook_in`): reading it gives the residual stream between attention and MLP, but a replacement
    there reaches only the MLP's input, not the residual sum the block returns. Editing it would silently
    be a different intervention, so edits there are refused with the equivalent that works."""
    target = hook_point(model, name).name or name
    if name.endswith("hook_resid_mid") and not target.endswith("hook_resid_mid"):
        raise ValueError(
            f"{name} is read from {target} on this architecture, and an edit there changes only the MLP input, "
            "not the residual stream: edit hook_attn_out (resid_mid = resid_pre + attn_out, so an added direction "
            "is the same) or hook_resid_pre / hook_resid_post"
        )


@contextmanager
def edit_hooks(model: torch.nn.Module, fns: Mapping[str, EditFn]) -> Iterator[None]:
    """Within the block, call `fns[name](activation)` whenever hook `name` fires; a tensor it returns
    replaces the activation downstream (None leaves it as is). Works for every forward of the model,
    including KV-cache decoding steps; the hooks are removed on exit, even after an error."""
    if not fns:
        yield
        return
    points = {name: hook_point(model, name) for name in fns}
    for name in fns:
        check_editable(model, name)
    handles = []
    batch_BT: list[int] = []  # [B, T] of the forward running now, for hook points that see [B*T, D]

    def note_shape(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if isinstance(ids, Tensor) and ids.ndim >= 2:
            batch_BT[:] = list(ids.shape[:2])

    def make(fn: EditFn):
        def hook(_module, _inputs, output):
            if output.ndim == 2 and len(batch_BT) == 2 and output.shape[0] == batch_BT[0] * batch_BT[1]:
                new = fn(output.view(*batch_BT, -1))  # OPT's fc2 (hook_mlp_out) sees tokens flattened
                return None if new is None else new.reshape(output.shape)
            return fn(output)

        return hook

    try:
        handles.append(hf_model_of(model).register_forward_pre_hook(note_shape, with_kwargs=True))
        for name, fn in fns.items():
            handles.append(points[name].register_forward_hook(make(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture_models(
    models: Sequence[torch.nn.Module],
    tokens_BT: Int[Tensor, "B T"],
    attention_mask_BT: Int[Tensor, "B T"],
    hooks: Sequence[str],
    batch_size: int = 256,
) -> Float[Tensor, "B T M H D"]:
    """Activations of every model at every hook on the same (right-padded) tokens, float32 on the CPU."""
    per_model = []
    for model in models:
        bridge = _bridge_of(model)
        chunks = []
        for i in range(0, tokens_BT.shape[0], batch_size):
            dev = bridge.cfg.device
            got = capture(
                bridge, tokens_BT[i : i + batch_size].to(dev), attention_mask_BT[i : i + batch_size].to(dev), hooks
            )
            chunks.append(torch.stack([got[h].float().cpu() for h in hooks], dim=2))  # [b, T, H, D]
        per_model.append(torch.cat(chunks))
    return torch.stack(per_model, dim=2)
