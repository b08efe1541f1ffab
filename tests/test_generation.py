"""KV-cache decoding through a TransformerBridge equals decoding through the plain HF model.

transformers 5.24 renamed the cache argument that decoder layers pass to attention (`cache`), and
TransformerLens 3.9's attention bridges ignored it: full forwards stayed exact while every
incremental step attended to itself alone. These tests fail on that combination without
`featalign.models.ensure_kv_cache_compat`.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from featalign.generation import decode, pad_batch
from featalign.models import load_model
from tests.archs import ARCH_CONFIGS, VOCAB, tiny_random_model


@pytest.fixture(scope="module", params=sorted(ARCH_CONFIGS))
def arch_dir(request, tmp_path_factory):
    return tiny_random_model(request.param, tmp_path_factory.mktemp(request.param))


def _prompts(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (n,), generator=g).tolist()
    return [torch.randint(0, len(VOCAB) - 4, (t,), generator=g).tolist() for t in lengths]


def test_incremental_step_through_bridge_equals_full_forward(arch_dir):
    from featalign.generation import _cache_kwarg, _cache_of  # noqa: PLC2701 (the decode loop's own step)

    lm = load_model(arch_dir).original_model
    ids = torch.tensor(_prompts(1, 0) * 2)
    with torch.no_grad():
        full = lm(input_ids=ids).logits[:, -1]
        prefill = lm(input_ids=ids[:, :-1], use_cache=True)
        step = lm(input_ids=ids[:, -1:], use_cache=True, **{_cache_kwarg(lm): _cache_of(prefill)}).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


def test_greedy_decode_through_bridge_equals_plain_hf(arch_dir):
    bridge = load_model(arch_dir)
    hf = AutoModelForCausalLM.from_pretrained(arch_dir, dtype=torch.float32).eval()
    prompts = _prompts(6, 1)
    a = decode(bridge, prompts, max_new_tokens=12, eos_id=len(VOCAB) - 3, pad_id=len(VOCAB) - 2)
    b = decode(hf, prompts, max_new_tokens=12, eos_id=len(VOCAB) - 3, pad_id=len(VOCAB) - 2)
    assert torch.equal(a.completion_ids_BC, b.completion_ids_BC)


def test_pad_batch_left_and_right():
    """The one padding helper: left for decoding (next token in the last column), right for training/caching."""
    seqs = [[5, 6, 7], [8]]
    ids, mask = pad_batch(seqs, 0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch(seqs, 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    with pytest.raises(ValueError, match="side"):
        pad_batch(seqs, 0, side="middle")  # type: ignore[arg-type]
