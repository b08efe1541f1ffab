"""Fixtures: a small reference store of the tiny organisms trio."""

from __future__ import annotations

import pytest

from featalign.activations import CacheConfig, cache_activations

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


@pytest.fixture(scope="session")
def small_cfg() -> CacheConfig:
    """~6 shards of ~1.3k rows for 6000 tokens: several commits, cheap."""
    return CacheConfig(hooks=tuple(HOOKS), n_tokens=6000, batch_size=32, shard_mb=0.25)


@pytest.fixture(scope="session")
def ref_store(trio, small_cfg, tmp_path_factory):
    """An uninterrupted run, the reference for resume/append tests."""
    return cache_activations(trio, None, out_dir=tmp_path_factory.mktemp("ref") / "store", config=small_cfg,
                             progress=False)
