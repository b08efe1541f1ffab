"""The one error path of every featalign command line, and the checks they run before any work.

Every CLI (`python -m featalign.cache`, `.train_crosscoder`, `.analyze`, `.organisms` and the scripts
in `examples/`) ends in `sys.exit(run_cli(main, prog))`, so a user never meets a traceback for a
mistake they can fix: an error prints as one line `<prog>: error: <problem and fix>` on stderr
(exit status 2 for a bad argument found before any work, 1 otherwise); Ctrl-C prints "interrupted —
rerun the same command to resume" (exit 130; every long command resumes from what it committed);
a full disk names the file being written. `FEATALIGN_DEBUG=1` re-raises instead, with the traceback.

The `check_*` helpers are the shared argument checks, run before anything is loaded or written, so
a typo costs seconds rather than a cached store, and no half-made `--out` is left behind.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEBUG_ENV = "FEATALIGN_DEBUG"
INTERRUPTED = "interrupted — rerun the same command to resume"


class UsageError(ValueError):
    """A bad argument or input, found before any work started; the message names it and the fix."""


def error_message(e: BaseException) -> str:
    """One line naming the problem and the fix (what `run_cli` prints for `e`)."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        if e.filename:
            return (
                f"no space left on device while writing {e.filename}; everything committed before it is intact: "
                "free disk space and rerun the same command to resume"
            )
        text = e.strerror or str(e)
        return (
            text
            if "resume" in text
            else f"no space left on device ({text}): free disk space and rerun the same command to resume"
        )
    text = " ".join(str(e).split())
    if isinstance(e, KeyError):  # str(KeyError('x')) is just "'x'"
        text = f"missing key {text}"
    if not text:
        text = type(e).__name__
    if not isinstance(e, (ValueError, OSError, RuntimeError, FloatingPointError, TypeError, KeyError, ImportError)):
        text = f"{type(e).__name__}: {text}"
    return text


def run_cli(main: Callable[[Sequence[str] | None], Any], prog: str, argv: Sequence[str] | None = None) -> int:
    """Run a CLI's `main(argv)` and turn every failure into one line on stderr and an exit status."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        main(argv)
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{prog}: {INTERRUPTED}", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse (exit 2, its own message) and explicit exits
        if isinstance(e.code, str):
            print(f"{prog}: error: {e.code}", file=sys.stderr)
            return 2
        return int(e.code or 0)
    except Exception as e:  # noqa: BLE001 - the whole point: no traceback for the user
        if debug:
            raise
        print(f"{prog}: error: {error_message(e)} (set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1


# --- shared argument checks (before any work) ------------------------------------------------------


def check_positive(name: str, value: float | int | None, allow_zero: bool = False) -> None:
    """Refuse a count/size that is <= 0 (or < 0 with `allow_zero`); None means "default" and passes."""
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_device(device: str) -> None:
    """Refuse a device this torch build cannot use, before any model is loaded."""
    import torch

    kind = str(device).split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise UsageError(
            f"--device {device}: {why} (torch {torch.__version__}); use --device cpu, "
            "or install a CUDA build of torch on a machine with a GPU"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here; use --device cpu")
    if kind not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device must be cpu, cuda, cuda:N or mps; got {device!r}")


def check_out_dir(path: str | Path, name: str = "--out") -> Path:
    """An output folder that may exist (to resume) but must not be a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{name} {p} is a file, not a folder: pass a folder path (it is created if missing)")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{name} {p}: {parent} is a file, so the folder cannot be created there")
    return p


def check_exists(path: str | Path, name: str, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{name} {p} does not exist: pass an existing {what}")
    if what == "folder" and not p.is_dir():
        raise UsageError(f"{name} {p} is a file: pass a {what}")
    if what == "file" and p.is_dir():
        raise UsageError(f"{name} {p} is a folder: pass a {what}")
    return p
