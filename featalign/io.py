"""Atomic file writes: a crash never leaves a half-written artifact under its final name."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import featalign


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def _temp_prefix(path: Path) -> str:
    """Temp siblings of `path` are `.<name>.<pid>.<random>.tmp`: the pid tells a later writer which ones a
    killed process left behind (`remove_stale_temps`)."""
    return f".{path.name}.{os.getpid()}."


def remove_stale_temps(path: Path) -> None:
    """Delete the temp siblings of `path` (files or folders) whose writing process no longer exists.

    A process killed between creating its temp and the rename leaves it behind; the rerun that writes the
    same path removes it, so a resumed run ends with the files of an uninterrupted one. A temp of a live
    process (another writer) is left alone.
    """
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        remove_stale_temps(path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # a failed write/fsync names no file: name the one being written (a full disk)
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def jsonable(obj: Any) -> Any:
    """`obj` with tensors and numpy scalars turned into lists and Python numbers (and dict keys into strings),
    so results made of analysis outputs can be written with `atomic_write_json` as they are."""
    import numpy as np
    import torch

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """`safetensors.torch.save` with its JSON header's keys sorted: the library writes the metadata in a
    random (hash map) order, so two runs of one command would write different bytes for equal data."""
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    if len(header) > n:  # cannot happen (same keys and values, compact separators); keep the library's bytes
        return raw
    return raw[:8] + header.ljust(n) + raw[8 + n :]


def canonical_for_pickle(obj: Any) -> Any:
    """`obj` with containers rebuilt and strings interned, so that its pickle (which memoizes by object
    identity) does not depend on where the objects came from: a resumed run's training state (keys
    unpickled from the checkpoint) then pickles to the same bytes as an uninterrupted run's."""
    import sys

    if isinstance(obj, dict):
        return {canonical_for_pickle(k): canonical_for_pickle(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [canonical_for_pickle(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(canonical_for_pickle(v) for v in obj)
    if isinstance(obj, str):
        return sys.intern(obj)
    return obj


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def atomic_dir(final: str | Path) -> _AtomicDir:
    """Context manager: write into a temp sibling dir, rename onto `final` on success.

    Used for HF checkpoint directories so that a killed run never leaves a partial
    checkpoint that looks complete.
    """
    return _AtomicDir(Path(final))


class _AtomicDir:
    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=_temp_prefix(self.final), suffix=".tmp"))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        _fsync_dir(self.final.parent)
        remove_stale_temps(self.final)


def provenance() -> dict[str, str]:
    """Stamp for every saved artifact: the versions and the CPU kernel set that produced it.

    Training is bitwise reproducible on one stack, not across them: the organisms' default build on an
    AVX512 machine with transformers 5.24 differs from one made earlier elsewhere, so a number is only
    comparable to another with the same stamp.
    """
    import importlib.metadata as md

    import torch

    stamp = {
        "featalign_version": featalign.__version__,
        "torch_version": torch.__version__,
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
    }
    for dist in ("transformers", "transformer-lens"):
        with contextlib.suppress(md.PackageNotFoundError):  # not installed: left out of the stamp
            stamp[dist.replace("-", "_") + "_version"] = md.version(dist)
    return stamp
