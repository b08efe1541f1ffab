"""featalign.distributed: the one reader of torchrun's environment (the multi-rank runs are in
tests/crosscoder/test_ddp_cli.py and tests/activations/test_distributed.py)."""

from __future__ import annotations

from featalign.distributed import DistInfo, current, init_distributed, torchrun_world_size


def test_outside_torchrun_is_one_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert torchrun_world_size() == 1
    assert init_distributed("cuda") == current() == DistInfo()
    assert DistInfo().rank_device("cuda") == "cuda" and DistInfo().is_main and not DistInfo().enabled


def test_torchrun_environment_before_joining(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = current()
    assert info == DistInfo(3, 4, 1) and info.enabled and not info.is_main
    assert info.rank_device("cuda") == "cuda:1" and info.rank_device("cuda:0") == "cuda:1"
    assert info.rank_device("cpu") == "cpu"
    assert current(0, 2).world_size == 2  # explicit values win
