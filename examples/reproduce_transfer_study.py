"""Reproduce the cross-domain transfer study (arXiv 2506.19733) on featalign's organisms.

Interventional part: from one base, RL (GRPO) and SFT on a single domain at a time (`--domains`), each
evaluated on every domain. Per tuned model and eval domain: the accuracy delta over the base (exact
McNemar on the same prompts). Pooled: the Cochran-Mantel-Haenszel common odds ratio of "tuned correct"
vs "base correct" over in-domain strata and over out-of-domain strata, and the mean delta on domains of
the same reasoning family vs other families.

Observational part (`--pairs`): any list of (base, tuned) model folders, e.g. open-weight RL models and
their bases, each scored on every domain; per pair the deltas, and the CMH odds ratio over domains
(in/out of domain when a pair names its training domain as `base:tuned:domain`).

Published (real models, math RL): in-domain +2.9 points, CMH OR 3.10; out-of-domain -3.2 points,
OR 1.32; gains transfer between structurally similar domains.

    python examples/reproduce_transfer_study.py                         # default organisms, --domains count,sub
    python examples/reproduce_transfer_study.py --domains sub,add,count,bool
    python examples/reproduce_transfer_study.py --pairs base_dir:rl_dir:sub,base_dir:other_dir --skip-build true

Outputs in `--out`: config.json, results.json, report.md, figures/ (transfer heatmaps).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featalign.analysis.inputs import open_organisms
from featalign.io import jsonable
from featalign.cli import UsageError, check_choice, check_exists, check_out_dir, check_positive, run_cli
from featalign.config import JsonConfig, cli_config, start_run
from featalign.models import load_model
from featalign.evaluation import (
    cmh_odds_ratio, evaluate, format_p, in_out_domain_cmh, mcnemar_paired, plot_transfer_heatmap, transfer_matrix,
)
from featalign.io import atomic_write_json, atomic_write_text, provenance, read_json
from featalign.organisms.build import build_organisms
from featalign.organisms.tasks import DOMAINS, parse_domains

PUBLISHED = {"in_domain": (2.9, 3.10), "out_of_domain": (-3.2, 1.32)}


@dataclass
class TransferConfig(JsonConfig):
    out: str = "runs/examples/transfer"
    organisms_preset: str = "default"
    organisms_dir: str | None = None
    domains: str = "count,sub"  # single-domain post-training runs (the first is the organisms' default)
    skip_build: bool = False  # only the observational part
    pairs: str | None = None  # base:tuned[:train_domain],... (HF folders)
    eval_domains: str | None = None  # default: all domains
    n_prompts: int = 1000  # per domain, for --pairs (the organisms use their build's evaluation)
    threads: int = 1

    def __post_init__(self) -> None:
        from featalign.organisms.config import PRESETS

        check_choice("--organisms-preset", self.organisms_preset, sorted(PRESETS))
        check_positive("--n-prompts", self.n_prompts)
        check_positive("--threads", self.threads)
        try:
            if not parse_domains(self.domains) and not self.skip_build:
                raise ValueError("--domains names no domain")
            if self.eval_domains:
                parse_domains(self.eval_domains)
        except ValueError as e:
            raise UsageError(str(e)) from e
        if self.skip_build and not self.pairs:
            raise UsageError("nothing to do: --skip-build true needs --pairs")
        for spec in filter(None, (self.pairs or "").split(",")):
            parts = spec.split(":")
            if len(parts) not in (2, 3):
                raise UsageError(f"--pairs entries must be base:tuned or base:tuned:train_domain, got {spec!r}")
            for d in parts[:2]:
                check_exists(d, "--pairs model folder", "folder")
            if len(parts) == 3:
                try:
                    parse_domains(parts[2])
                except ValueError as e:
                    raise UsageError(f"--pairs {spec!r}: {e}") from e


HELP = {
    "out": "output folder", "organisms_preset": "organisms preset", "organisms_dir": "organisms folder",
    "domains": "comma-separated domains: one SFT + one RL run on each (built if missing, same base and recipe)",
    "skip_build": "skip the organisms part (only --pairs)",
    "pairs": "comma-separated base:tuned[:train_domain] model folders for the observational comparison",
    "eval_domains": "domains to evaluate --pairs on (default: all)", "n_prompts": "eval prompts per domain for --pairs",
    "threads": "torch threads",
}


def family_means(delta_row: dict[str, float], train_domain: str) -> dict[str, float]:
    """Mean delta on the other domains of the training domain's family and on the other families."""
    fam = DOMAINS[train_domain].family
    same = [v for d, v in delta_row.items() if d != train_domain and DOMAINS[d].family == fam]
    other = [v for d, v in delta_row.items() if DOMAINS[d].family != fam]
    return {"same_family": float(np.mean(same)) if same else float("nan"),
            "other_families": float(np.mean(other)) if other else float("nan")}


def cmh_rows(cmh: dict) -> list[str]:
    rows = []
    for k, v in cmh.items():
        pub = PUBLISHED.get(k)
        rows.append(f"| {k.replace('_', ' ')} | {v.n_strata} | {v.mean_delta_points:+.1f} | {v.odds_ratio:.2f} "
                    f"[{v.ci_low:.2f}, {v.ci_high:.2f}] | {format_p(v.p_value)} | "
                    + (f"{pub[0]:+.1f} pts, OR {pub[1]:.2f}" if pub else "-") + " |")
    return rows


CMH_HEAD = ["| strata | n | mean delta (pts) | CMH OR [95% CI] | p | published |", "|---|---|---|---|---|---|"]


def organisms_part(cfg: TransferConfig, out: Path, lines: list[str]) -> dict:
    src = open_organisms(cfg.organisms_preset, cfg.organisms_dir)
    domains = parse_domains(cfg.domains)
    # The extra runs go into a copy (same base, the runs already built are reused): the source folder,
    # which the other commands read, keeps its post-training domains.
    root = out / "organisms"
    if not (root / "config.json").exists():
        shutil.copytree(src.root, root, ignore=shutil.ignore_patterns("_state"), dirs_exist_ok=True)
    org = build_organisms(dataclasses.replace(src.config, post_train_domains=tuple(domains)), root)
    ev = org.eval_dir
    eval_domains = list(org.config.pretrain_domains)
    load = lambda n: {d: np.array(v, bool) for d, v in read_json(ev / f"{n}.json")["correct"].items()}  # noqa: E731
    base = load("base")
    res = {"organisms": str(src.root), "runs": str(org.root), "domains": domains}
    lines += [f"## Single-domain post-training on the organisms (`{src.root}`, runs in `{org.root}`)", "",
              f"One base; SFT and GRPO on each of {domains}; {org.config.eval_samples} eval prompts per domain.", ""]
    for kind in ("rl", "sft"):
        tuned = {d: load(f"{kind}-{d}") for d in domains}
        mat = transfer_matrix(base, tuned, eval_domains)
        cmh = in_out_domain_cmh(base, tuned)
        plot_transfer_heatmap(mat, domains, eval_domains, out / "figures" / f"transfer_{kind}.png",
                              title=f"{kind.upper()}: accuracy delta vs base (points)")
        fams = {d: family_means(dict(zip(eval_domains, row)), d) for d, row in zip(domains, mat.tolist())}
        res[kind] = {"delta_points": mat.tolist(), "eval_domains": eval_domains,
                     "cmh": {k: vars(v) for k, v in cmh.items()}, "family_means": fams,
                     "mcnemar": {d: {e: vars(mcnemar_paired(base[e], tuned[d][e])) for e in eval_domains}
                                 for d in domains}}
        lines += [f"### {kind.upper()}: accuracy delta (points) per training domain (rows) and eval domain", "",
                  "| trained on | " + " | ".join(eval_domains) + " | same family | other families |",
                  "|---|" + "---|" * (len(eval_domains) + 2)]
        for d, row in zip(domains, mat.tolist()):
            lines.append(f"| {d} | " + " | ".join(("**%+.1f**" if e == d else "%+.1f") % v
                                                for e, v in zip(eval_domains, row))
                         + f" | {fams[d]['same_family']:+.1f} | {fams[d]['other_families']:+.1f} |")
        lines += ["", *CMH_HEAD, *cmh_rows(cmh), "", f"Figure: `figures/transfer_{kind}.png`.", ""]
    return res


def pairs_part(cfg: TransferConfig, lines: list[str]) -> dict:
    eval_domains = parse_domains(cfg.eval_domains) if cfg.eval_domains else list(DOMAINS)
    specs = [p.split(":") for p in cfg.pairs.split(",") if p]  # checked in TransferConfig
    scored: dict[str, dict] = {}

    def score(path):
        if path not in scored:
            m = load_model(path)
            t = m.tokenizer
            scored[path] = evaluate(m, t, eval_domains, cfg.n_prompts, desc=f"eval {Path(path).name}")
        return scored[path]

    res = {}
    lines += ["## Observational comparison of (base, tuned) pairs", "",
              f"{cfg.n_prompts} eval prompts per domain; delta in points (tuned - base).", "",
              "| pair | " + " | ".join(eval_domains) + " | CMH OR over domains [95% CI] |",
              "|---|" + "---|" * (len(eval_domains) + 1)]
    by_train: dict[str, dict] = {}
    for s in specs:
        b, t = score(s[0]), score(s[1])
        deltas = {d: 100 * float(t[d].mean() - b[d].mean()) for d in eval_domains}
        pooled = cmh_odds_ratio([(b[d], t[d]) for d in eval_domains])
        name = f"{'/'.join(Path(s[0]).parts[-2:])} -> {'/'.join(Path(s[1]).parts[-2:])}"
        res[name] = {"base": s[0], "tuned": s[1], "train_domain": s[2] if len(s) == 3 else None,
                     "delta_points": deltas, "cmh_all_domains": vars(pooled)}
        lines.append(f"| {name} | " + " | ".join(f"{deltas[d]:+.1f}" for d in eval_domains)
                     + f" | {pooled.odds_ratio:.2f} [{pooled.ci_low:.2f}, {pooled.ci_high:.2f}] |")
        if len(s) == 3:
            by_train.setdefault(s[0], {})[s[2]] = t
    for b_path, tuned in by_train.items():
        cmh = in_out_domain_cmh(score(b_path), tuned)
        res.setdefault("in_out_cmh", {})[b_path] = {k: vars(v) for k, v in cmh.items()}
        lines += ["", f"In/out of domain for base `{b_path}`:", "", *CMH_HEAD, *cmh_rows(cmh)]
    lines.append("")
    return res


def main(argv: list[str] | None = None) -> dict:
    cfg = cli_config(TransferConfig, HELP, "reproduce_transfer_study.py", __doc__, argv)
    check_out_dir(cfg.out)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    out = start_run(cfg, cfg.out)
    lines = ["# Cross-domain transfer (reproduction of arXiv 2506.19733)", ""]
    results: dict = {"config": cfg.to_dict(), **provenance()}
    if not cfg.skip_build:
        results["organisms"] = organisms_part(cfg, out, lines)
    if cfg.pairs:
        results["pairs"] = pairs_part(cfg, lines)
    lines.append(f"Total time: {time.time() - t0:.0f} s.")
    report = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", report)
    results["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "results.json", jsonable(results))
    print(report)
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, "reproduce_transfer_study.py", sys.argv[1:]))
