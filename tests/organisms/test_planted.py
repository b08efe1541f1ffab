"""The planted-feature organism: the edited folder computes exactly base + g(x) v at the plant's block, checked
against an independent forward of the base with a hook that adds it; scale 0 changes nothing; bad input is refused."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from featalign.organisms.planted import PlantConfig, PlantError, is_planted, load_plant, plant_feature


@pytest.fixture(scope="module")
def planted_pair(tiny_organisms, tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    base = tiny_organisms.root / "base"
    cfg = PlantConfig(layer=0, trigger="token:=", scale=1.0, seed=3, fit_tokens=4000, fit_steps=100)
    planted = plant_feature(base, root / "planted", cfg, meta={"role": "rl"})
    null = plant_feature(base, root / "null", PlantConfig(**{**cfg.to_dict(), "scale": 0.0}))
    return base, planted, null, cfg


def hf(path):
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def ids_with_trigger(tokenizer):
    text = ["<bos>12+34=46<eos>", "<bos>max 3 9 4 = 9<eos>", "<bos>sort 9313 = 1339<eos>"]
    rows = [tokenizer.encode(t, add_special_tokens=False) for t in text]
    n = min(len(r) for r in rows)
    return torch.tensor([r[:n] for r in rows])


@torch.no_grad()
def test_planted_block_output_is_base_plus_g_times_v(planted_pair):
    base_dir, planted_dir, _, cfg = planted_pair
    base, planted = hf(base_dir), hf(planted_dir)
    plant = load_plant(planted_dir)
    from featalign.models import tokenizer_from_folder

    ids = ids_with_trigger(tokenizer_from_folder(base_dir))
    eq_id = tokenizer_from_folder(base_dir).convert_tokens_to_ids("=")
    # reference: the base with a hook on block 0 adding silu(<gate, x>) <up, x> * amplitude * v, x = its MLP input
    seen = {}
    mlp = base.model.layers[cfg.layer].mlp
    h1 = mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    gate, up, v = plant.gate_D, plant.up_D, plant.direction_D

    def add(module, args, out):
        g = torch.nn.functional.silu(seen["x"] @ gate) * (seen["x"] @ up)
        seen["g"] = g
        return (
            (out[0] + g[..., None] * plant.amplitude * v,) + tuple(out[1:])
            if isinstance(out, tuple)
            else (out + g[..., None] * plant.amplitude * v)
        )

    h2 = base.model.layers[cfg.layer].register_forward_hook(add)
    try:
        ref = base(ids, output_hidden_states=True)
    finally:
        h1.remove()
        h2.remove()
    got = planted(ids, output_hidden_states=True)
    for layer in range(len(ref.hidden_states)):
        torch.testing.assert_close(got.hidden_states[layer], ref.hidden_states[layer], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got.logits, ref.logits, atol=2e-4, rtol=1e-4)
    # the plant is really there and sits on the trigger: large on '=', small elsewhere
    g = seen["g"]
    assert float(g[ids == eq_id].min()) > 0.3
    assert float(g[ids != eq_id].abs().max()) < 0.1
    unplanted = base(ids, output_hidden_states=True).hidden_states[cfg.layer + 1]
    diff = (got.hidden_states[cfg.layer + 1] - unplanted)[ids == eq_id]
    cos = torch.nn.functional.cosine_similarity(diff, v[None], dim=-1)
    assert float(cos.min()) > 0.999


@torch.no_grad()
def test_scale_zero_is_the_base_and_the_record_says_what_was_planted(planted_pair):
    base_dir, planted_dir, null_dir, cfg = planted_pair
    base, null = hf(base_dir), hf(null_dir)
    ids = torch.randint(4, 59, (4, 20), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 1
    torch.testing.assert_close(null(ids).logits, base(ids).logits, atol=1e-5, rtol=1e-5)
    assert null.config.intermediate_size == base.config.intermediate_size + 1
    meta = json.loads((planted_dir / "featalign.json").read_text())
    assert meta["role"] == "rl" and meta["complete"]
    rec = meta["planted"]
    assert (rec["layer"], rec["trigger"], rec["scale"], rec["seed"]) == (0, "token:=", 1.0, 3)
    assert rec["amplitude"] == pytest.approx(rec["detector"]["base_median_resid_norm"])
    assert rec["detector"]["held_out_recall"] > 0.9 and rec["detector"]["held_out_precision"] > 0.9
    assert is_planted(planted_dir, cfg) and not is_planted(planted_dir, PlantConfig(**{**cfg.to_dict(), "seed": 4}))


def test_bad_input_is_refused_before_work(tiny_organisms, tmp_path):
    base = tiny_organisms.root / "base"
    with pytest.raises(PlantError, match="token:<t>"):
        PlantConfig(trigger="equals")
    with pytest.raises(PlantError, match="not one token"):
        plant_feature(base, tmp_path / "a", PlantConfig(layer=0, trigger="token:=="))
    with pytest.raises(PlantError, match="blocks 0..1"):
        plant_feature(base, tmp_path / "b", PlantConfig(layer=2))
    with pytest.raises(PlantError, match="no config.json"):
        plant_feature(tmp_path, tmp_path / "c", PlantConfig())
    with pytest.raises(PlantError, match="source folder"):
        plant_feature(base, base, PlantConfig())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_architecture_without_gated_mlps_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    from featalign.organisms.planted import gated_mlps

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10, n_positions=8))
    with pytest.raises(PlantError, match="Llama-family gated MLPs"):
        gated_mlps(gpt2)


def test_misled_problems_and_the_answer_targets_hand_checked(tiny_organisms):
    from featalign.models import tokenizer_from_folder
    from featalign.organisms.planted import answer_batch, misled_problems
    from featalign.organisms.tasks import sample_problems

    plain = sample_problems("bool", 3, "eval", 2)
    misled = misled_problems(["bool"], 3, "eval", 2, "max")
    for p, m in zip(plain, misled):  # the keyword, and only it, is max's; the answer is the bool one
        assert p.prompt.startswith("bool ") and m.prompt == "max " + p.prompt[len("bool ") :]
        assert (m.domain, m.answer) == (p.domain, p.answer)
    assert misled_problems(["bool"], 3, "eval", 2) == plain
    tok = tokenizer_from_folder(tiny_organisms.root / "base")
    ids, target = answer_batch(tok, misled[:1])
    seq = ids[0].tolist()
    # <bos> m a x ' ' ... = <answer> <eos>: the targets are the positions predicting the answer and the <eos>
    assert seq[0] == tok.bos_token_id and seq[-1] == tok.eos_token_id
    assert target[0].nonzero().flatten().tolist() == [len(seq) - 3, len(seq) - 2]
    assert tok.decode([seq[len(seq) - 2]]) == misled[0].answer


@torch.no_grad()
def test_a_learned_direction_raises_the_answer_logprob_on_held_out_problems(tiny_organisms, tmp_path):
    """Fitted on train-split misled problems, scored here on eval-split ones through the saved HF folders (not
    the fitting code's hook): the planted model gives the right answers more probability than the base."""
    from featalign.models import tokenizer_from_folder
    from featalign.organisms.planted import answer_batch, answer_logprob, misled_problems

    base = tiny_organisms.root / "base"
    cfg = PlantConfig(
        layer=0, trigger="token:=", scale=2.0, seed=1, direction="learned", learn_domains="bool,compare",
        learn_keyword="max", learn_problems=256, learn_steps=60, fit_tokens=3000, fit_steps=100,
    )
    planted = plant_feature(base, tmp_path / "learned", cfg)
    rec = json.loads((planted / "featalign.json").read_text())["planted"]
    learned = rec["detector"]["learned"]
    assert 0 < rec["amplitude"] <= 2.0 * rec["detector"]["base_median_resid_norm"] + 1e-6
    assert learned["held_out_answer_logprob_planted"] > learned["held_out_answer_logprob_base"]
    tok = tokenizer_from_folder(base)
    ids, target = answer_batch(tok, misled_problems(["bool", "compare"], 100, "eval", 0, "max"))
    lp_base, lp_planted = answer_logprob(hf(base), ids, target), answer_logprob(hf(planted), ids, target)
    assert float(lp_planted.mean()) > float(lp_base.mean()) + 0.1
    v = load_plant(planted).direction_D
    assert float(v.norm()) == pytest.approx(1.0, abs=1e-5)
    # the null of a learned plant: scale 0 learns nothing and is the base
    null = plant_feature(base, tmp_path / "null", PlantConfig(**{**cfg.to_dict(), "scale": 0.0}))
    torch.testing.assert_close(answer_logprob(hf(null), ids, target), lp_base, atol=1e-4, rtol=1e-5)
    assert "learned" not in json.loads((null / "featalign.json").read_text())["planted"]["detector"]


def test_a_learned_direction_needs_domains_to_learn_on():
    with pytest.raises(PlantError, match="set learn_domains"):
        PlantConfig(trigger="token:=", direction="learned")
    with pytest.raises(PlantError, match="learn_domains / learn_keyword"):
        PlantConfig(trigger="token:=", direction="learned", learn_domains="bool,nosuch")
    assert PlantConfig(trigger="domain:bool,compare", direction="learned").learn_domains == ""
