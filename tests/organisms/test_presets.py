import json
from pathlib import Path

from featalign.organisms.build import pretrain_batch
from featalign.organisms.config import preset_config
from featalign.organisms.tasks import SLOPPY_SUFFIX, get_domain

ROOT = Path(__file__).resolve().parents[2]


def test_default_config_json_is_the_one_the_committed_build_was_made_with():
    """Adding domains or presets must not change what `default` builds: its JSON equals the 2026-12-02 build's,
    and the 2026-12-01 build's but for the two pretraining fields added since (packing, gradient shards)."""
    now = json.loads(json.dumps(preset_config("default").to_dict()))
    assert now == json.loads((ROOT / "docs" / "data" / "organisms_default_2026-12-02.json").read_text())["config"]
    before = json.loads((ROOT / "docs" / "data" / "organisms_default_2026-12-01.json").read_text())["config"]
    added = {"pretrain_packing", "pretrain_shards"}
    assert set(now) - set(before) == added and {k: v for k, v in now.items() if k not in added} == before


def test_tiny_pretrains_on_the_original_ten():
    original = ["add", "sub", "modsum", "sort", "reverse", "max", "count", "bool", "compare", "lookup"]
    assert list(preset_config("tiny").pretrain_domains) == original


def test_structured_pretraining_is_sloppy_on_counting_only():
    """The planted deficiency reaches the base through its pretraining batches, on the counting family alone."""
    cfg = preset_config("structured-tiny")
    batch = [p for step in range(20) for p in pretrain_batch(cfg, step)]
    sloppy = {p.domain for p in batch if p.answer.endswith(SLOPPY_SUFFIX)}
    assert sloppy == {"countl", "countd", "countcmp"}
    assert {get_domain(d).family for d in sloppy} == {"counting"}
    assert set(cfg.pretrain_domains) - sloppy == {"largest", "smallest", "sortasc", "sortdesc"}
