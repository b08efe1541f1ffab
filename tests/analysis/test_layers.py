"""Per-layer change ||x_tuned - x_base|| / ||x_base|| and `--hook auto`: against a plain HF forward, on models with
a change planted into one block's weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from featalign.analysis.layers import choose_layer
from tests.archs import VOCAB, save_char_tokenizer

N_LAYERS = 4
TEXTS = ["copy hello: hello", "12+34=46", "rev abc: cba", "max 3 9 4 = 9", "sort 3 1 2: 1 2 3", "q"]


def llama(out: Path, planted_block: int | None = None, scale: float = 3.0) -> Path:
    """A 4-block random llama (seed 0) and its char tokenizer; `planted_block`: that block's MLP output weights
    get Gaussian noise (scale x their std), so the residual stream is unchanged before that block and changed
    from it on."""
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=len(VOCAB), max_position_embeddings=128, hidden_size=32,
                                   intermediate_size=64, num_hidden_layers=N_LAYERS, num_attention_heads=4,
                                   num_key_value_heads=2)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = len(VOCAB) - 4, len(VOCAB) - 3, len(VOCAB) - 2
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    if planted_block is not None:
        W = model.model.layers[planted_block].mlp.down_proj.weight
        with torch.no_grad():
            W.add_(scale * W.std() * torch.randn(W.shape, generator=torch.Generator().manual_seed(1)))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_char_tokenizer(out)
    return out


def hf_relative_change(base_dir: Path, tuned_dir: Path) -> np.ndarray:
    """Reference: plain HF forwards with output_hidden_states of `<bos> text` (TextSource's tokens), one at a time;
    hidden_states[L + 1] is block L's output (the last block's from a forward hook); per block the mean over the tokens but BOS (as the store keeps them) of
    ||h_tuned - h_base|| / ||h_base||."""
    from transformers import AutoModelForCausalLM

    models = [AutoModelForCausalLM.from_pretrained(d).eval() for d in (base_dir, tuned_dir)]
    last: list = []  # HF's last hidden state is after the final norm: the last block's own output from a hook
    for m in models:
        m.model.layers[-1].register_forward_hook(lambda mod, args, out: last.append(out[0] if isinstance(out, tuple)
                                                                                    else out))
    per_token = []
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([[VOCAB.index("<bos>"), *(VOCAB.index(c) for c in text)]])
            hb, ht = (list(m(input_ids=ids, output_hidden_states=True).hidden_states[:-1]) + [last.pop()]
                      for m in models)
            per_token.append(torch.stack([((ht[L + 1] - hb[L + 1]).norm(dim=-1) / hb[L + 1].norm(dim=-1))[0, 1:]
                                          for L in range(N_LAYERS)], 1))
    return torch.cat(per_token).double().mean(0).numpy()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("layers")
    return {"root": root, "base": llama(root / "base"),
            **{j: llama(root / f"planted-{j}", planted_block=j) for j in range(N_LAYERS)}}


def test_choose_layer_rule():
    assert choose_layer([0.1, 0.3, 0.2, 0.9], 4)["layer"] == 1  # the last block is no candidate
    assert choose_layer([0.1, 0.2, 0.3, 0.9], 4)["layer"] == 2
    assert choose_layer([0.0, 0.0, 0.0, 0.5], 4)["layer"] == 1  # all tied: the middle block (default_hook's)
    assert choose_layer([0.4, 0.1, 0.4, 0.0], 4)["layer"] == 0  # tied at equal distance: the shallower
    assert choose_layer([0.1, 0.3], 2)["layer"] == 1  # 2 blocks: both are candidates
    assert choose_layer([0.5], 1)["layer"] == 0
    c = choose_layer([0.1, 0.3, 0.2, 0.0], 4, [[0.05, 0.15], [0.25, 0.35], [0.1, 0.3], [0, 0]])
    assert c["hook"] == "blocks.1.hook_resid_post" and c["clear"] is False  # 0.25 < block 2's 0.3
    assert choose_layer([0.1, 0.3, 0.2, 0.0], 4, [[0.05, 0.15], [0.25, 0.35], [0.1, 0.2], [0, 0]])["clear"]
    with pytest.raises(ValueError, match="one change per block"):
        choose_layer([0.1, 0.2], 4)
    with pytest.raises(ValueError, match="pass --hook explicitly"):
        choose_layer([0.1, float("nan"), 0.2, 0.3], 4)


@pytest.mark.parametrize("block", [1, 3])
def test_layer_change_equals_a_plain_hf_forward(planted, block):
    from featalign.activations import TextSource
    from featalign.analysis.layers import measure_layer_change
    from featalign.models import ModelSpec

    specs = [ModelSpec("base", str(planted["base"]), role="base"), ModelSpec("rl", str(planted[block]), role="rl")]
    n = sum(len(t) for t in TEXTS)  # every token but BOS
    got = measure_layer_change(specs, TextSource(TEXTS), n, planted["root"] / f"store-{block}", progress=False)
    ref = hf_relative_change(planted["base"], planted[block])
    table = got["table"]
    assert table["n_tokens"] == n and table["hooks"] == [f"blocks.{L}.hook_resid_post" for L in range(N_LAYERS)]
    np.testing.assert_allclose(table["per_model"]["rl"]["mean"], ref, rtol=1e-4, atol=1e-6)
    assert table["mean_over_tuned"] == table["per_model"]["rl"]["mean"]  # one tuned model
    assert all(ref[:block] == 0) and all(ref[block:] > 0.01)  # the plant: nothing before its block
    for m, (lo, hi) in zip(table["mean_over_tuned"], table["mean_over_tuned_95"]):
        assert lo <= m <= hi
    # the rule on the reference: the planted block 3 is the last, so no candidate changed -> the middle block
    assert got["choice"]["layer"] == (1 if block == 3 else int(np.argmax(ref[:3])))


def test_analyze_hook_auto_picks_the_planted_block(planted, tmp_path):
    """`--hook auto` through the analyze CLI: planted at block 2 (the deepest candidate), blocks 0 and 1
    unchanged, so the analysis runs at blocks.2 and the report records the per-block table."""
    from featalign.analysis.cli import main

    out = tmp_path / "rep"
    rep = main(["--model", f"base={planted['base']}", "--model", f"rl={planted[2]}", "--hook", "auto",
                "--stages", "attribution", "--out", str(out), "--n-tokens", "400", "--eval-tokens", "200",
                "--layer-tokens", "300", "--n-latents", "16", "--k", "2", "--steps", "5", "--batch-size", "64",
                "--progress", "false"])
    saved = json.loads((out / "report.json").read_text())
    assert saved["hook"] == "blocks.2.hook_resid_post" == rep["hook_choice"]["choice"]["hook"]
    mean = saved["hook_choice"]["table"]["mean_over_tuned"]
    assert mean[0] == mean[1] == 0 and mean[2] > 0 and saved["hook_choice"]["choice"]["clear"] is True
    md = (out / "report.md").read_text()
    assert "Hook chosen by `--hook auto`: `blocks.2.hook_resid_post`" in md and "blocks.2.hook_resid_post (chosen)" in md
    from featalign.activations import ActivationStore

    assert ActivationStore(out / "activations" / "train").hooks == ("blocks.2.hook_resid_post",)
    assert len(ActivationStore(out / "activations" / "layers").hooks) == N_LAYERS


def test_examples_read_the_block_auto_picks(planted, tmp_path):
    """The examples take analyze's default hook (`auto`) through the same `resolve_hook`: the drift example on a
    base and a tuned model changed only from block 2 on runs its crosscoders there and records the measurement;
    a given hook is still read as given."""
    from featalign.activations import ActivationStore
    from tests.test_examples import _load

    mod = _load("reproduce_drift")

    common = ["--model", f"base={planted['base']}", "--model", f"rl={planted[2]}",
              "--series", f"rl={planted[1]},{planted[2]}", "--drift-mode", "pairwise", "--drift-nulls", "false",
              "--n-tokens", "400", "--eval-tokens", "200", "--layer-tokens", "300", "--n-latents", "16", "--k", "2",
              "--steps", "5", "--top-k", "4", "--progress", "false"]
    r = mod.main(common + ["--out", str(tmp_path / "auto")])
    assert r["config"]["hook"] == "auto" and r["hook"] == "blocks.2.hook_resid_post"
    mean = r["hook_choice"]["table"]["mean_over_tuned"]
    assert mean[0] == mean[1] == 0 and mean[2] > 0
    assert ActivationStore(tmp_path / "auto" / "activations" / "train").hooks == ("blocks.2.hook_resid_post",)
    assert "blocks.2.hook_resid_post (chosen)" in (tmp_path / "auto" / "report.md").read_text()
    given = mod.main(common + ["--hook", "blocks.0.hook_resid_post", "--out", str(tmp_path / "given")])
    assert given["hook"] == "blocks.0.hook_resid_post" and "hook_choice" not in given
    assert not (tmp_path / "given" / "activations" / "layers").exists()


def test_layers_cli_measures_without_training(planted, tmp_path, capsys):
    """`python -m featalign.analysis.layers`: the measurement alone, for pipelines that cache and train at one hook
    (docs/real_models.md): on the block-2 plant it prints blocks.2 as its last line and saves the table with its
    config; nothing is trained and only the measurement's store is cached."""
    from featalign.analysis.layers import main

    out = tmp_path / "hook"
    r = main(["--model", f"base={planted['base']}", "--model", f"rl={planted[2]}", "--layer-tokens", "300",
              "--out", str(out), "--progress", "false"])
    assert capsys.readouterr().out.rstrip("\n").splitlines()[-1] == "blocks.2.hook_resid_post" == r["hook"]
    saved = json.loads((out / "hook_choice.json").read_text())
    assert saved["hook_choice"]["choice"]["hook"] == "blocks.2.hook_resid_post" and saved["config"]["layer_tokens"] == 300
    mean = saved["hook_choice"]["table"]["mean_over_tuned"]
    assert mean[0] == mean[1] == 0 and mean[2] > 0 and "featalign_version" in saved
    assert "blocks.2.hook_resid_post (chosen)" in (out / "hook_choice.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["activations", "hook_choice.json", "hook_choice.md"]
    with pytest.raises(SystemExit):  # a flag of analyze's that does not belong here is refused by the parser
        main(["--model", f"base={planted['base']}", "--n-latents", "8", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
