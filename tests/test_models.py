"""load_model / ModelGroup: bridges from local folders, shared tokenizer and width checks."""

from __future__ import annotations

import pytest
import torch

from featalign.models import ModelGroup, ModelSpec, load_model


@pytest.fixture(scope="module")
def trio(tiny_organisms) -> ModelGroup:
    return ModelGroup.from_paths(tiny_organisms.default_trio())


def test_load_model_returns_bridge_matching_hf(tiny_organisms):
    from transformer_lens.model_bridge import TransformerBridge

    from featalign.organisms.model import load_organism

    d = tiny_organisms.base_dir
    bridge = load_model(d)
    hf, tok = load_organism(d)
    assert isinstance(bridge, TransformerBridge)
    ids = torch.tensor([tok("add 12+5=17")["input_ids"]])
    assert bridge.tokenizer("add 12+5=17")["input_ids"] == ids[0].tolist()  # organisms' tokenizer kept
    with torch.no_grad():
        torch.testing.assert_close(bridge(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_load_model_bad_path():
    with pytest.raises(OSError, match="Pass a local Hugging Face folder"):
        load_model("/nonexistent/featalign-model")


def test_group_roles_and_checks(trio):
    assert trio.names == ["base", "rl", "sft"] and [s.role for s in trio.specs] == ["base", "rl", "sft"]
    assert trio.check_widths(["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]) == {
        "blocks.0.hook_resid_post": 32, "blocks.1.hook_resid_post": 32}
    with pytest.raises(ValueError, match="different widths"):
        trio.check_widths(["blocks.0.hook_resid_post", "blocks.0.mlp.gate.hook_out"])  # d vs d_mlp
    with pytest.raises(ValueError, match="role"):
        ModelSpec("x", "p", role="teacher")
    with pytest.raises(ValueError, match="unique"):
        ModelGroup(trio.specs[:1] * 2, trio.models[:1] * 2)


def test_group_refuses_other_d_model(trio, tmp_path):
    from featalign.organisms import preset_config
    from featalign.organisms.model import new_model, save_organism
    from featalign.organisms.tokenizer import build_tokenizer

    tok = build_tokenizer()
    wide = save_organism(new_model(preset_config("tiny", d_model=48), tok), tmp_path / "wide", {"kind": "test"}, tok)
    g = ModelGroup([trio.specs[0], ModelSpec("wide", str(wide))], [trio.models[0], load_model(wide)])
    with pytest.raises(ValueError, match=r"hook 'blocks.0.hook_resid_post' has different widths.*'wide': 48"):
        g.check_widths(["blocks.0.hook_resid_post"])


def test_group_refuses_other_tokenizer(trio, tiny_organisms):
    other = load_model(tiny_organisms.base_dir)
    other.tokenizer.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="different tokenizer"):
        ModelGroup([trio.specs[0], ModelSpec("other", str(tiny_organisms.base_dir))], [trio.models[0], other])
