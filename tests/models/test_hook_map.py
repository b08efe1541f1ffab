"""The hook-name -> module map on tiny random models of eight architectures, against plain Hugging Face.

The reference is an independently loaded HF model (no bridge) with torch hooks on the modules that by
each architecture's own code produce the named activation; a per-architecture table of module paths
lives here, in the test, and nowhere in featalign.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from featalign.models import capture_models, edit_hooks, load_model
from tests.archs import ARCH_CONFIGS, tiny_random_model

LAYER = 1
HOOKS = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out")

# (decoder layers path, attention-output module, mlp-output module) relative to a layer, per architecture
HF_PATHS = {
    "llama": ("model.layers", "self_attn", "mlp"),
    "qwen2": ("model.layers", "self_attn", "mlp"),
    "qwen3": ("model.layers", "self_attn", "mlp"),
    "gemma3": ("model.layers", "post_attention_layernorm", "post_feedforward_layernorm"),
    "gpt2": ("transformer.h", "attn", "mlp"),
    "gpt_neox": ("gpt_neox.layers", "attention", "mlp"),
    "opt": ("model.decoder.layers", "self_attn", "fc2"),
    "olmo2": ("model.layers", "post_attention_layernorm", "post_feedforward_layernorm"),  # post-norm, like gemma3
}
assert set(HF_PATHS) == set(ARCH_CONFIGS)


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.fixture(scope="module", params=sorted(ARCH_CONFIGS))
def arch_models(request, tmp_path_factory):
    d = tiny_random_model(request.param, tmp_path_factory.mktemp(request.param))
    hf = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager").eval()
    return request.param, load_model(d), hf


def _hf_module(arch: str, hf, hook: str):
    layers, attn, mlp = HF_PATHS[arch]
    layer = _get(hf, layers)[LAYER]
    return layer, {"hook_attn_out": attn, "hook_mlp_out": mlp}.get(hook)


def _hf_run(arch: str, hf, ids, hook: str, fn=None):
    """Plain-HF forward with `fn` applied to the activation `hook` names; returns (activation, logits)."""
    layer, sub = _hf_module(arch, hf, hook)
    got = {}

    def out_hook(_m, _i, out):
        h = out[0] if isinstance(out, tuple) else out
        got["x"] = h.detach().clone()
        if fn is None:
            return None
        new = fn(h)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    def pre_hook(_m, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        got["x"] = h.detach().clone()
        if fn is None:
            return None
        return ((fn(h), *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": fn(h)})

    if hook == "hook_resid_pre":
        handle = layer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        handle = (_get(layer, sub) if sub else layer).register_forward_hook(out_hook)
    try:
        with torch.no_grad():
            logits = hf(input_ids=ids).logits
    finally:
        handle.remove()
    return got["x"], logits


IDS = torch.tensor([[92, 5, 17, 40, 33, 8, 61, 12, 70, 3], [92, 44, 9, 9, 21, 50, 13, 2, 77, 31]])


@pytest.mark.parametrize("hook", HOOKS)
def test_capture_equals_hf(arch_models, hook):
    arch, bridge, hf = arch_models
    name = f"blocks.{LAYER}.{hook}"
    want, _ = _hf_run(arch, hf, IDS, hook)
    got = capture_models([bridge], IDS, torch.ones_like(IDS), [name])[:, :, 0, 0]
    torch.testing.assert_close(got, want.reshape(got.shape), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("hook", HOOKS)
def test_edit_equals_hf_edit_and_transformer_lens_hook(arch_models, hook):
    """A replacement (not only an added direction) through edit_hooks == the same edit on plain HF
    == the same edit as a TransformerLens hook through run_with_hooks."""
    arch, bridge, hf = arch_models
    name = f"blocks.{LAYER}.{hook}"
    delta = torch.linspace(-1, 1, hf.config.hidden_size)
    fn = lambda x: 0.5 * x + delta  # noqa: E731
    _, want = _hf_run(arch, hf, IDS, hook, fn)
    with torch.no_grad(), edit_hooks(bridge, {name: fn}):
        got = bridge.original_model(input_ids=IDS).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        tl = bridge.run_with_hooks(IDS, fwd_hooks=[(name, lambda x, hook: fn(x))])
    torch.testing.assert_close(got, tl, atol=1e-5, rtol=1e-5)
    clean = hf(input_ids=IDS).logits
    assert (got - clean).abs().max() > 1e-2  # the edit reached the logits


def test_read_only_hooks_leave_logits_bitwise_equal(arch_models):
    arch, bridge, _ = arch_models
    with torch.no_grad():
        clean = bridge.original_model(input_ids=IDS).logits
        with edit_hooks(bridge, {f"blocks.{LAYER}.{h}": (lambda x: None) for h in HOOKS}):
            hooked = bridge.original_model(input_ids=IDS).logits
    assert torch.equal(clean, hooked)


def test_resid_mid_edits_are_refused_with_the_equivalent(arch_models):
    """Reading resid_mid is fine where the architecture has one; editing it would reach only the MLP input."""
    arch, bridge, _ = arch_models
    name = f"blocks.{LAYER}.hook_resid_mid"
    if name not in bridge.hook_dict:  # GPT-NeoX: parallel attention and MLP, no resid_mid
        assert arch == "gpt_neox"
        return
    capture_models([bridge], IDS, torch.ones_like(IDS), [name])
    with pytest.raises(ValueError, match="hook_attn_out"):
        with edit_hooks(bridge, {name: lambda x: x}):
            pass


def test_plain_hf_model_is_refused_naming_load_model(arch_models):
    _, _, hf = arch_models
    with pytest.raises(TypeError, match="load_model"):
        capture_models([hf], IDS, torch.ones_like(IDS), ["blocks.0.hook_resid_post"])
