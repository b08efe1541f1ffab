"""`python -m featalign.organisms build [--preset NAME] [--out DIR] [--post-train-domains a,b]` and `... domains`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from featalign.cli import UsageError, check_out_dir, run_cli
from featalign.organisms.config import CACHE_ENV, PRESETS, default_organisms_dir, preset_config
from featalign.organisms.tasks import DOMAINS, parse_domains


def main(argv: Sequence[str] | None = None) -> int:
    """`build` or list `domains`; raises rather than exits, for `run_cli`."""
    p = argparse.ArgumentParser(
        prog="python -m featalign.organisms",
        description="Build featalign's model organisms: a tiny Llama base pretrained on a synthetic "
        "multi-domain suite, and SFT and GRPO descendants (5 checkpoints each) post-trained on one domain.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or resume building) the organisms, then evaluate them")
    b.add_argument(
        "--preset",
        default="default",
        choices=sorted(PRESETS),
        help="preset: default, tiny (tests), structured (domains that share structure by construction) or its "
        "test twin structured-tiny (default: default)",
    )
    b.add_argument(
        "--out", default=None, help=f"output folder (default: ${CACHE_ENV} or the user cache dir, /organisms/<preset>)"
    )
    b.add_argument(
        "--post-train-domains",
        default=None,
        help="comma-separated domains for single-domain SFT+RL runs (default: the preset's, count for default, "
        f"add for tiny, countd for structured); from {sorted(DOMAINS)}",
    )
    b.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    b.add_argument("--no-eval", action="store_true", help="skip evaluating the models")
    sub.add_parser("domains", help="list the task domains")
    args = p.parse_args(argv)

    if args.cmd == "domains":
        mixes = {name: preset_config(name).pretrain_domains for name in PRESETS}
        for d in DOMAINS.values():
            presets = ",".join(name for name, mix in mixes.items() if d.name in mix)
            print(f"{d.name:8s} {d.family:12s} {presets:26s} {d.description}")
        return 0
    from featalign.organisms.build import build_organisms

    overrides = {}
    if args.post_train_domains:
        try:
            overrides["post_train_domains"] = tuple(parse_domains(args.post_train_domains))
        except ValueError as e:
            raise UsageError(f"--post-train-domains: {e}") from e
        if not overrides["post_train_domains"]:
            raise UsageError(
                "--post-train-domains names no domain; list them with `python -m featalign.organisms domains`"
            )
    if args.seed is not None:
        overrides["seed"] = args.seed
    cfg = preset_config(args.preset, **overrides)
    out = check_out_dir(args.out or default_organisms_dir(args.preset))
    org = build_organisms(cfg, out, evaluate_models=not args.no_eval)
    print(f"organisms ready in {org.root}")
    if not args.no_eval:
        print((org.eval_dir / "summary.md").read_text())
        print(f"figures: {org.eval_dir}/*.png")
    print("timings (s):", json.dumps(json.loads((org.root / "timings.json").read_text())))
    return 0


def cli(prog: str = "featalign-organisms") -> None:
    """Console script `featalign-organisms`; also `python -m featalign.organisms`."""
    sys.exit(run_cli(main, prog, sys.argv[1:]))
