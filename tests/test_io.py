"""featalign.io: a write killed before its rename leaves only a temp sibling, and the next write of the same
path removes it (tests/test_resume.py once found one left in a resumed analyze run's crosscoder folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from featalign.io import atomic_dir, atomic_write_json

KILLED_WRITE = """
import os, signal, sys
from featalign import io
os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)   # die after the temp is written, before the rename
if sys.argv[2] == "dir":
    with io.atomic_dir(sys.argv[1]) as d:
        (d / "w").write_text("half")
else:
    io.atomic_write_json(sys.argv[1], {"half": True})
"""


def _killed_write(path, kind="file") -> None:
    r = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(path), kind], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr


def test_the_next_write_removes_what_a_killed_write_left(tmp_path):
    _killed_write(tmp_path / "cfg.json")
    _killed_write(tmp_path / "ckpt-1", "dir")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.startswith((".cfg.json.", ".ckpt-1.")) and n.endswith(".tmp") for n in left)
    atomic_write_json(tmp_path / "cfg.json", {"a": 1})
    with atomic_dir(tmp_path / "ckpt-1") as d:
        (d / "w").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "ckpt-1"]
    assert (tmp_path / "ckpt-1" / "w").read_text() == "whole"


def test_a_live_writers_temp_and_other_targets_temps_are_kept(tmp_path):
    _killed_write(tmp_path / "other.json")
    live = tmp_path / f".cfg.json.{os.getppid()}.abcd1234.tmp"  # a process that exists: maybe still writing
    live.write_text("in flight")
    atomic_write_json(tmp_path / "cfg.json", {"a": 1})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert live.exists() and "cfg.json" in names
    assert [n for n in names if n.startswith(".other.json.")]  # not this path's: its own next write removes it
