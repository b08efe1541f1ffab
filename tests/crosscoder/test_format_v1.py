"""Files of format version 1 (written by the code before variants became plug-ins, tests/data/crosscoder_v1)
load, encode and resume exactly as they did then."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from featalign.crosscoder import FORMAT_VERSION, Crosscoder, CrosscoderConfig, InMemoryActivations, Trainer, TrainerConfig

DATA = Path(__file__).parent.parent / "data" / "crosscoder_v1"


@pytest.mark.parametrize("variant", ["l1", "batchtopk", "jumprelu"])
def test_v1_saved_crosscoder_loads_and_encodes_as_before(variant):
    assert json.loads((DATA / variant / "cfg.json").read_text())["format_version"] == 1 < FORMAT_VERSION
    cc = Crosscoder.load(DATA / variant)
    exp = load_file(str(DATA / "expected.safetensors"))
    assert cc.cfg.variant == variant
    # the same firings, and values to fp32 rounding: the expected file was written on an AVX512 CPU, and an
    # AVX2 one's matmul kernels round differently (1 ulp, 1.2e-7, seen); a wrongly read weight, scale or
    # threshold would be off by far more
    f = cc.encode(exp["x"])
    assert torch.equal(f > 0, exp[f"{variant}_f"] > 0)
    torch.testing.assert_close(f, exp[f"{variant}_f"], rtol=0, atol=1e-6)
    torch.testing.assert_close(cc(exp["x"]), exp[f"{variant}_xhat"], rtol=0, atol=1e-6)
    assert torch.equal(cc.tokens_since_fired, torch.arange(6))
    if variant == "l1":
        assert cc.cfg.variant_cfg.n_shared == 1 and cc.variant.penalty.tolist()[:2] == pytest.approx([0.15, 1.0])
    if variant == "jumprelu":
        assert cc.cfg.variant_cfg.init_threshold == 0.05


def test_v1_saved_crosscoder_resaves_as_current_format(tmp_path):
    Crosscoder.load(DATA / "batchtopk").save(tmp_path)
    d = json.loads((tmp_path / "cfg.json").read_text())
    assert d["format_version"] == FORMAT_VERSION and d["variant_cfg"]["k"] == 2 and "k" not in d
    again = Crosscoder.load(tmp_path)
    assert again.variant.threshold.item() == pytest.approx(0.01)


def test_v1_half_finished_run_resumes_to_the_same_result(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(DATA / "run_batchtopk", run)
    x = torch.randn(256, 2, 1, 4, generator=torch.Generator().manual_seed(5))
    cc = CrosscoderConfig(models=("base", "rl"), hooks=("h",), d_model=4, n_latents=8, variant="batchtopk",
                          variant_cfg={"k": 2, "aux_k": 4, "aux_dead_tokens": 0}, dead_tokens=64)
    tc = TrainerConfig(steps=8, batch_size=32, warmup_steps=2, checkpoint_every=4, log_every=2)
    m = Trainer(cc, tc, InMemoryActivations(x, 32, models=cc.models, hooks=cc.hooks), run, progress=False).train()
    ref = load_file(str(DATA / "run_batchtopk_final.safetensors"))  # the v1 code's uninterrupted run
    ref["variant.threshold"] = ref.pop("threshold")
    ref.pop("penalty")
    got = m.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-6, atol=1e-7, msg=k)
