import json
from pathlib import Path

import pytest

from featalign.organisms.build import pretrain_batch
from featalign.organisms.config import OrganismConfig, preset_config
from featalign.organisms.tasks import SLOPPY_SUFFIX, get_domain

ROOT = Path(__file__).resolve().parents[2]


def _build_config(name: str) -> dict:
    return json.loads((ROOT / "docs" / "data" / f"organisms_default_{name}.json").read_text())["config"]


def test_default_config_json_is_the_one_the_committed_build_was_made_with():
    """Adding domains or presets must not change what `default` builds: its JSON equals the newest committed
    build's; each earlier build's differs by the fields added since."""
    now = json.loads(json.dumps(preset_config("default").to_dict()))
    assert now == _build_config("2026-12-02_rl_shards")
    for name, added in (
        ("2026-12-02", {"rl_shards"}),
        ("2026-12-01", {"pretrain_packing", "pretrain_shards", "rl_shards"}),
    ):
        before = _build_config(name)
        assert set(now) - set(before) == added and {k: v for k, v in now.items() if k not in added} == before


def test_a_folder_saved_before_a_field_existed_is_read_with_its_legacy_value(tmp_path):
    """A 2026-12-02 folder (one rollout shard) is not taken for today's two-shard default: the build refuses it."""
    from featalign.organisms.build import build_organisms

    cfg = _build_config("2026-12-02")
    root = tmp_path / "org"
    root.mkdir()
    (root / "config.json").write_text(json.dumps(cfg))
    assert OrganismConfig.load(root / "config.json").rl_shards == 1
    with pytest.raises(ValueError, match="rl_shards: folder has 1, asked 2"):
        build_organisms(preset_config("default"), root, workers=1)


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
