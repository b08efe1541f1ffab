"""OLMo 2 in bf16/fp16 through the bridge: loads, captures what the HF model computes, and generates.

OLMo-family rotary embeddings return float32 cos/sin (their own RoPE casts q/k back); TransformerLens 3.9's
`PositionEmbeddingsAttentionBridge` rotates with Llama's RoPE, which does not, and its attention then fails
on `float32 @ bf16`. `featalign.models.ensure_rotary_dtype` (applied by `load_model`) casts q/k back.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from featalign.generation import decode
from featalign.models import capture_models, ensure_rotary_dtype, load_model
from tests.archs import VOCAB, tiny_random_model

LAYER = 1
IDS = torch.tensor([[92, 5, 17, 40, 33, 8, 61, 12, 70, 3], [92, 44, 9, 9, 21, 50, 13, 2, 77, 31]])
LOW = (torch.bfloat16, torch.float16)


@pytest.fixture(scope="module")
def olmo2_dir(tmp_path_factory):
    return tiny_random_model("olmo2", tmp_path_factory.mktemp("olmo2"))


@pytest.fixture(scope="module")
def fp32_logits(olmo2_dir):
    with torch.no_grad():
        return load_model(olmo2_dir)(IDS)


def _hf(path, dtype: torch.dtype):
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="eager").eval()


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_low_precision_olmo2_captures_hf_hidden_states(olmo2_dir, fp32_logits, dtype):
    bridge = load_model(olmo2_dir, dtype=dtype)
    hf = _hf(olmo2_dir, dtype)
    got = {}
    hf.model.layers[LAYER].register_forward_hook(lambda _m, _i, out: got.setdefault("x", out))
    with torch.no_grad():
        hf_logits = hf(input_ids=IDS).logits
    want = got["x"][0] if isinstance(got["x"], tuple) else got["x"]
    acts = capture_models([bridge], IDS, torch.ones_like(IDS), [f"blocks.{LAYER}.hook_resid_post"])[:, :, 0, 0]
    torch.testing.assert_close(acts, want.float(), rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    with torch.no_grad():
        logits = bridge(IDS)
    assert logits.dtype == dtype and bool(torch.isfinite(logits).all())
    torch.testing.assert_close(logits.float(), hf_logits.float(), rtol=2e-2, atol=1e-2)
    torch.testing.assert_close(logits.float(), fp32_logits, rtol=5e-2, atol=5e-2)  # the same model, loosely


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_low_precision_olmo2_greedy_decode_equals_plain_hf(olmo2_dir, dtype):
    """KV-cached decoding: cached k/v and each step's q in the model dtype, as in HF's own forward."""
    prompts = [[40, 41, 42], [10, 20, 30, 40, 50]]
    kw = dict(max_new_tokens=8, eos_id=len(VOCAB) - 3, pad_id=len(VOCAB) - 2)
    a = decode(load_model(olmo2_dir, dtype=dtype), prompts, **kw)
    b = decode(_hf(olmo2_dir, dtype), prompts, **kw)
    assert torch.equal(a.completion_ids_BC, b.completion_ids_BC)


def test_user_hooks_on_rotated_q_see_the_model_dtype_and_shim_is_idempotent(olmo2_dir):
    bridge = load_model(olmo2_dir, dtype="bfloat16")
    assert ensure_rotary_dtype(bridge) is bridge  # a second call registers nothing more
    n_hooks = len(bridge.blocks[0].attn.hook_rot_q._forward_hooks)
    ensure_rotary_dtype(bridge)
    assert len(bridge.blocks[0].attn.hook_rot_q._forward_hooks) == n_hooks
    seen = []
    with torch.no_grad():
        bridge.run_with_hooks(IDS, fwd_hooks=[("blocks.0.attn.hook_rot_q", lambda x, hook: seen.append(x.dtype))])
    assert seen == [torch.bfloat16]
