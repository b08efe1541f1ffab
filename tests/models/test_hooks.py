import pytest
import torch

from featalign.models import capture, default_hook, resolve_hooks, stop_layer


def test_default_hook_is_middle_resid():
    assert default_hook(4) == "blocks.1.hook_resid_post"
    assert default_hook(2) == "blocks.0.hook_resid_post"
    assert default_hook(32) == "blocks.15.hook_resid_post"


def test_unknown_hook_lists_close_matches(trio):
    with pytest.raises(KeyError, match=r"blocks\.1\.hook_resid_post"):
        resolve_hooks(trio.models[0], ["blocks.1.hook_resid_pots"])
    with pytest.raises(ValueError, match="duplicate"):
        resolve_hooks(trio.models[0], ["blocks.0.hook_resid_post"] * 2)


def test_stop_layer():
    assert stop_layer(["blocks.0.hook_resid_post"], 4) == 1
    assert stop_layer(["blocks.0.hook_resid_post", "blocks.2.attn.hook_pattern"], 4) == 3
    assert stop_layer(["blocks.3.hook_resid_post"], 4) is None  # last block: nothing to skip
    assert stop_layer(["ln_final.hook_normalized"], 4) is None
    assert stop_layer(["hook_embed"], 4) == 1


def test_capture_equals_run_with_cache_on_padded_batch(trio):
    """Right-padded batch with attention mask, stopped early == unpadded full run_with_cache."""
    m = trio.models[0]
    texts = ["add 12+5=17", "max 3 9 4 = 9 and more text"]
    ids = [m.tokenizer(t)["input_ids"] for t in texts]
    T = max(map(len, ids))
    toks = torch.tensor([i + [0] * (T - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (T - len(i)) for i in ids])
    hooks = ["blocks.0.hook_resid_post", "blocks.0.attn.hook_pattern"]
    got = capture(m, toks, mask, hooks)
    for b, i in enumerate(ids):
        _, cache = m.run_with_cache(torch.tensor([i]), names_filter=hooks)
        torch.testing.assert_close(got[hooks[0]][b, : len(i)], cache[hooks[0]][0], atol=1e-5, rtol=1e-5)
        L = len(i)
        torch.testing.assert_close(got[hooks[1]][b, :, :L, :L], cache[hooks[1]][0], atol=1e-5, rtol=1e-5)
