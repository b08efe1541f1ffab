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


# --- the tokenizer trap: a char-level tokenizer in a `qwen2` folder, rebuilt by AutoTokenizer without spaces ---

TRAP_TEXTS = ["max 3 9 4 = 9", "add 12 + 5 = 17", "sort 9 3 1 = 1 3 9", "a b c d e f"]


@pytest.fixture(scope="module")
def qwen2_char_folder(tmp_path_factory):
    from tests.archs import tiny_random_model

    return tiny_random_model("qwen2", tmp_path_factory.mktemp("qwen2") / "m")


def _own_ids(folder, text):
    """The reference: the folder's saved tokenizer, read as saved (no AutoTokenizer)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(folder))(text, add_special_tokens=False)["input_ids"]


def test_qwen2_folder_keeps_its_char_tokenizer(qwen2_char_folder):
    from transformers import AutoTokenizer

    probe = TRAP_TEXTS[0]
    auto = AutoTokenizer.from_pretrained(str(qwen2_char_folder))
    assert auto(probe, add_special_tokens=False)["input_ids"] != _own_ids(qwen2_char_folder, probe)  # the trap is real
    bridge = load_model(qwen2_char_folder)
    ids = bridge.tokenizer(probe)["input_ids"]
    assert ids[1:] == _own_ids(qwen2_char_folder, probe) and ids[0] == bridge.tokenizer.bos_token_id
    assert bridge.tokenizer.decode(ids, skip_special_tokens=True) == probe  # spaces kept


def test_cache_cli_on_qwen2_folder_caches_the_right_tokens(qwen2_char_folder, tmp_path):
    from featalign.activations import ActivationStore
    from featalign.activations.cli import main

    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TRAP_TEXTS) + "\n")
    main(["--model", f"a={qwen2_char_folder}", "--hook", "blocks.0.hook_resid_post", "--text-file", str(texts),
          "--out", str(tmp_path / "s"), "--n-tokens", "100000", "--device", "cpu"])
    # one row per character of each text (BOS dropped), counted by the folder's own tokenizer
    assert len(ActivationStore(tmp_path / "s")) == sum(len(_own_ids(qwen2_char_folder, t)) for t in TRAP_TEXTS)


def test_folder_without_tokenizer_is_named_and_tokenizer_option_fixes_it(qwen2_char_folder, tmp_path, capsys):
    import shutil

    from featalign.activations import ActivationStore
    from featalign.activations.cli import main
    from featalign.cli import run_cli

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(qwen2_char_folder / f, bare / f)
    with pytest.raises(FileNotFoundError, match=f"model folder {bare} has no tokenizer"):
        load_model(bare)
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TRAP_TEXTS) + "\n")
    argv = ["--model", f"a={bare}", "--hook", "blocks.0.hook_resid_post", "--text-file", str(texts),
            "--out", str(tmp_path / "s"), "--device", "cpu"]
    assert run_cli(main, "cache", argv) == 1
    err = capsys.readouterr().err
    assert f"model folder {bare} has no tokenizer" in err and "--tokenizer DIR" in err
    assert run_cli(main, "cache", argv + ["--tokenizer", str(qwen2_char_folder)]) == 0
    assert len(ActivationStore(tmp_path / "s")) == sum(len(_own_ids(qwen2_char_folder, t)) for t in TRAP_TEXTS)


def test_a_passed_tokenizer_survives_transformer_lens_or_is_refused(qwen2_char_folder):
    """docs/real_models.md's workaround `load_model(path, tokenizer=tok)` used to be undone by TransformerLens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    probe = TRAP_TEXTS[1]
    tok = PreTrainedTokenizerFast.from_pretrained(str(qwen2_char_folder))  # as a user would, no add_bos_token
    bridge = load_model(qwen2_char_folder, tokenizer=tok)
    assert bridge.tokenizer(probe, add_special_tokens=False)["input_ids"] == _own_ids(qwen2_char_folder, probe)
    in_memory = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(qwen2_char_folder / "tokenizer.json")),
                                        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    with pytest.raises(ValueError, match="never saved to a folder.*save_pretrained"):
        load_model(qwen2_char_folder, tokenizer=in_memory)
