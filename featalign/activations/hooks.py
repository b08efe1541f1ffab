"""Hook-point names: validation with close-match errors, the default middle layer, and capture.

Capture runs the bridge's own forward with hooks on its HookPoints (so values equal
`run_with_cache` exactly) and `stop_at_layer` just past the deepest hooked block, which skips the
rest of the model; that is what puts caching at or above a bare HF forward's tokens/s.
"""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_PRE_BLOCK = ("hook_embed", "hook_pos_embed", "embed.", "pos_embed.", "rotary_emb.", "embed_ln.")


def default_hook(n_layers: int) -> str:
    """The residual stream after the first half of the blocks (`blocks.{n//2-1}.hook_resid_post`).

    The feature-level study aligns one middle residual layer; resid_post of block n/2-1 is
    exactly half-way through the network (layer 1 of the 4-layer default organisms).
    """
    return f"blocks.{max(n_layers // 2 - 1, 0)}.hook_resid_post"


def resolve_hooks(bridge: "TransformerBridge", hooks: Sequence[str]) -> list[str]:
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
    bridge: "TransformerBridge",
    tokens_BT: Int[Tensor, "B T"],
    attention_mask_BT: Int[Tensor, "B T"],
    hooks: Sequence[str],
) -> dict[str, Float[Tensor, "B T D"]]:
    """Activations at `hooks` for one padded batch, stopping after the deepest hooked block."""
    got: dict[str, Tensor] = {}

    def make_fn(name: str):
        def fn(x: Tensor, hook) -> None:
            got[name] = x.detach()

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
