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
    assert is_complete(org.base_dir)
    for kind in ("sft", "rl"):
        for k in range(1, 6):
            d = org.model_dir(kind, "add", k)
            assert is_complete(d), d
            meta = json.loads((d / "featalign.json").read_text())
            assert meta["role"] == kind and meta["checkpoint"] == k and meta["featalign_version"]
        # checkpoints are distinct models along one run
        assert not _same_weights(org.model_dir(kind, "add", 1), org.model_dir(kind, "add", 5))
    s = org.summary()
    assert set(s["accuracy"]) == {"base", "sft-add", "rl-add"}
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
    assert is_complete(root / "rl-add" / "ckpt-2") and not (root / "rl-add" / "ckpt-3").exists()
    monkeypatch.setattr(build_mod, "save_organism", real_save)
    org = build_organisms(preset_config("tiny"), root, evaluate_models=False, workers=1)
    # same seed, same weights (determinism), and resume changes nothing
    assert _same_weights(org.base_dir, tiny_organisms.base_dir)
    for kind in ("sft", "rl"):
        for k in range(1, 6):
            assert _same_weights(org.model_dir(kind, "add", k), tiny_organisms.model_dir(kind, "add", k)), (kind, k)


def test_partial_checkpoint_is_rebuilt(tiny_organisms, tmp_path):
    root = tmp_path / "org"
    shutil.copytree(tiny_organisms.root, root)
    ck = root / "sft-add" / "ckpt-5"
    (ck / "featalign.json").unlink()  # looks like a half-written folder
    (ck / "model.safetensors").write_bytes(b"garbage")
    (root / "_state" / "sft-add.pt").unlink()
    org = build_organisms(preset_config("tiny"), root, evaluate_models=False, workers=1)
    assert is_complete(ck)
    assert _same_weights(ck, tiny_organisms.model_dir("sft", "add", 5))
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

    for d in [tiny_organisms.base_dir, tiny_organisms.model_dir("rl", "add", 2), tiny_organisms.model_dir("sft")]:
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
