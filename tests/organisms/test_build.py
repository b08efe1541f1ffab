import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import featalign.organisms.build as build_mod
from featalign.organisms import preset_config
from featalign.organisms.build import build_organisms
from featalign.organisms.config import OrganismConfig
from featalign.organisms.model import is_complete


def _weights(d):
    return load_file(str(d / "model.safetensors"))


def _same_weights(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_tiny_build_layout(tiny_organisms):
    org = tiny_organisms
    dom = org.config.post_train_domains[0]
    assert is_complete(org.base_dir)
    for kind in ("sft", "rl"):
        for k in range(1, 6):
            d = org.model_dir(kind, dom, k)
            assert is_complete(d), d
            meta = json.loads((d / "featalign.json").read_text())
            assert meta["role"] == kind and meta["checkpoint"] == k and meta["featalign_version"]
        # checkpoints are distinct models along one run
        assert not _same_weights(org.model_dir(kind, dom, 1), org.model_dir(kind, dom, 5))
    s = org.summary()
    assert set(s["accuracy"]) == {"base", f"sft-{dom}", f"rl-{dom}"}
    assert (org.eval_dir / "summary.md").exists() and (org.eval_dir / "transfer_rl.png").exists()
    assert OrganismConfig.load(org.root / "config.json") == org.config


def test_resume_after_interruption_is_bitwise_equal(tiny_organisms, tmp_path, monkeypatch):
    """Kill the build while it writes RL checkpoint 3; a rerun must finish with identical weights.

    This build runs in one process (`workers=1`: the simulated kill is patched into this process), the
    fixture's on two (pretraining shards and post-training side by side): equal weights also show that
    where a piece of the build ran does not change its bits."""
    root = tmp_path / "org"
    real_save = build_mod.save_organism

    def dying_save(model, directory, meta, tokenizer=None):
        if meta.get("role") == "rl" and meta.get("checkpoint") == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_save(model, directory, meta, tokenizer)

    monkeypatch.setattr(build_mod, "save_organism", dying_save)
    with pytest.raises(KeyboardInterrupt):
        build_organisms(preset_config("tiny"), root, workers=1)
    run = root / f"rl-{tiny_organisms.config.post_train_domains[0]}"
    assert is_complete(run / "ckpt-2") and not (run / "ckpt-3").exists()
    monkeypatch.setattr(build_mod, "save_organism", real_save)
    org = build_organisms(preset_config("tiny"), root, evaluate_models=False, workers=1)
    # same seed, same weights (determinism), and resume changes nothing
    assert _same_weights(org.base_dir, tiny_organisms.base_dir)
    for kind in ("sft", "rl"):
        for k in range(1, 6):
            assert _same_weights(org.model_dir(kind, ckpt=k), tiny_organisms.model_dir(kind, ckpt=k)), (kind, k)


def test_partial_checkpoint_is_rebuilt(tiny_organisms, tmp_path):
    root = tmp_path / "org"
    shutil.copytree(tiny_organisms.root, root)
    dom = tiny_organisms.config.post_train_domains[0]
    ck = root / f"sft-{dom}" / "ckpt-5"
    (ck / "featalign.json").unlink()  # looks like a half-written folder
    (ck / "model.safetensors").write_bytes(b"garbage")
    (root / "_state" / f"sft-{dom}.pt").unlink()
    org = build_organisms(preset_config("tiny"), root, evaluate_models=False, workers=1)
    assert is_complete(ck)
    assert _same_weights(ck, tiny_organisms.model_dir("sft", dom, 5))
    assert org.root == root


def test_different_config_in_folder_is_refused(tiny_organisms):
    with pytest.raises(ValueError, match="different config.*seed"):
        build_organisms(preset_config("tiny", seed=5), tiny_organisms.root)


def test_unknown_preset_and_domain():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_config("huge")
    with pytest.raises(ValueError, match="unknown domain 'chess'"):
        preset_config("tiny", post_train_domains=("chess",))


def test_every_organism_loads_through_transformer_bridge(tiny_organisms):
    from transformer_lens.model_bridge import TransformerBridge

    from featalign.organisms.model import load_organism

    for d in [tiny_organisms.base_dir, tiny_organisms.model_dir("rl", ckpt=2), tiny_organisms.model_dir("sft")]:
        bridge = TransformerBridge.boot_transformers(str(d), device="cpu")
        hf, tok = load_organism(d)
        text = "add 12+34=46"
        toks = bridge.to_tokens(text)
        assert toks[0].tolist() == tok(text)["input_ids"]  # exactly one <bos>, same ids
        assert bridge.tokenizer.decode(toks[0], skip_special_tokens=True) == text
        logits, cache = bridge.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_post"))
        assert "blocks.0.hook_resid_post" in cache and cache["blocks.0.hook_resid_post"].shape[-1] == 32
        with torch.no_grad():
            ref = hf(input_ids=toks).logits
        assert torch.allclose(logits, ref, atol=1e-4)


def test_ensure_organisms_opens_complete_folder_without_writing(tiny_organisms):
    from featalign.organisms.build import ensure_organisms

    cfg_file = tiny_organisms.root / "config.json"
    before = cfg_file.stat().st_mtime_ns
    org = ensure_organisms("tiny", tiny_organisms.root)
    assert org.is_complete() and org.config == tiny_organisms.config
    assert cfg_file.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="holds the 'tiny' preset"):
        ensure_organisms("default", tiny_organisms.root)


def test_summary_scopes_match_the_saved_correctness(tiny_organisms):
    """summary.json's per-domain and family CMH, recomputed by hand from the per-sample eval files."""
    import numpy as np

    from featalign.organisms.tasks import get_domain

    org = tiny_organisms
    s = org.summary()
    dom = org.config.post_train_domains[0]
    family = get_domain(dom).family
    correct = {
        name: {
            d: np.array(v, bool) for d, v in json.loads((org.eval_dir / f"{name}.json").read_text())["correct"].items()
        }
        for name in ("base", f"rl-{dom}")
    }
    base, rl = correct["base"], correct[f"rl-{dom}"]

    def mh(domains):  # Mantel-Haenszel: sum(a d / n) / sum(b c / n), tuned row first
        num = sum(rl[d].sum() * (~base[d]).sum() / (2 * len(base[d])) for d in domains)
        den = sum((~rl[d]).sum() * base[d].sum() / (2 * len(base[d])) for d in domains)
        return num / den

    cmh = s["transfer"]["rl"]["cmh"]
    same = [d for d in base if d != dom and get_domain(d).family == family]
    other = [d for d in base if get_domain(d).family != family]
    assert len(same) >= 1 and cmh["same_family"]["n_strata"] == len(same)
    assert cmh["same_family"]["odds_ratio"] == pytest.approx(mh(same), rel=1e-9)
    assert cmh["other_families"]["odds_ratio"] == pytest.approx(mh(other), rel=1e-9)
    assert s["transfer"]["rl"]["cmh_per_domain"][dom][dom]["odds_ratio"] == pytest.approx(mh([dom]), rel=1e-9)
    # the tiny preset's domains carry no planted stop: no completion is the answer followed by '.'
    assert set(s["sloppy_stop_share"]["base"].values()) == {0.0}


def test_tiny_rl_beats_the_base_on_enough_samples_for_the_success_analysis(tiny_organisms):
    """The tiny preset's contract with the RL-success tests (tests/test_examples.py, tests/analysis,
    tests/test_notebooks.py): its RL model solves, on at least min_tasks + 1 out-of-domain tasks, at least
    min_samples eval problems that the base fails (one task to spare: the walkthrough holds two tasks out).
    The counts come from rescoring the models here; the build's record must agree with them."""
    from featalign.analysis.success_features import SuccessConfig
    from featalign.evaluation import eval_problems, score_problems
    from featalign.organisms.model import load_organism

    org, need = tiny_organisms, SuccessConfig()
    dom = org.config.post_train_domains[0]
    (base, tok), (rl, _) = load_organism(org.base_dir), load_organism(org.model_dir("rl"))
    wins = {}
    for d in org.config.pretrain_domains:
        probs = eval_problems(d, org.config.eval_samples)
        wins[d] = int((~score_problems(base, tok, probs) & score_problems(rl, tok, probs)).sum())
    recorded = org.summary()["paired_tests"][f"rl-{dom}"]
    assert wins == {d: recorded[d]["base_fail_tuned_ok"] for d in wins}
    enough = [d for d, n in wins.items() if d != dom and n >= need.min_samples]
    assert len(enough) >= need.min_tasks + 1, wins
