"""Reproduce the cross-domain transfer study (arXiv 2506.19733) on featalign's organisms, and score any
(base, tuned) models on any task set.

Interventional part (organisms only: it builds them and post-trains them here): from one base, RL (GRPO)
and SFT on a single domain at a time (`--domains`), each evaluated on every domain. Per tuned model and eval
domain: the accuracy delta over the base (exact McNemar on the same prompts). Pooled: the Cochran-Mantel-Haenszel
common odds ratio of "tuned correct" vs "base correct" over in-domain strata and over out-of-domain strata, and
the mean delta on domains of the same reasoning family vs other families. `--skip-build true` leaves it out.

Observational part: (base, tuned) pairs of any models, each scored (greedy decoding, the task's verifier) on
every task of `--tasks` (a JSONL task set with several tasks, `organisms:dom,...`, default all organisms
domains): per pair the delta and exact McNemar p per task, the transfer matrix (tuned models x tasks) per
base, the CMH odds ratio over all tasks, and, when the pair names the task(s) it was trained on, the CMH over
in-task and over out-of-task strata (pooled per base too, over its `--pairs` that name one). Pairs come from
`--pairs base:tuned[:train_task],...` (model folders, many bases allowed) and/or from a model set (analyze's
`--model NAME=DIR[@rev]` flags or `--model-set FILE`, hub ids too): its base against every other model of the
set, trained on `--train-tasks` (checkpoint series are not scored).

Published (real models, math RL): in-domain +2.9 points, CMH OR 3.10; out-of-domain -3.2 points,
OR 1.32; gains transfer between structurally similar domains.

    python examples/reproduce_transfer_study.py                         # default organisms, --domains count,sub
    python examples/reproduce_transfer_study.py --domains sub,add,count,bool
    python examples/reproduce_transfer_study.py --skip-build true --tasks my_tasks.jsonl \
        --pairs base_dir:rl_dir:math,base_dir:other_dir
    python examples/reproduce_transfer_study.py --skip-build true --tasks my_tasks.jsonl --verifier numeric \
        --model base=B --model rl=R --model sft=S --train-tasks math

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

from featalign.analysis.config import HELP as ANALYZE_HELP
from featalign.analysis.inputs import load_task_set, open_organisms
from featalign.cli import UsageError, check_choice, check_exists, check_out_dir, check_positive, run_cli
from featalign.config import JsonConfig, cli_config, start_run
from featalign.evaluation import (
    cmh_odds_ratio, evaluate_tasks, format_p, in_out_domain_cmh, mcnemar_paired, plot_transfer_heatmap,
    transfer_matrix,
)
from featalign.io import atomic_write_json, atomic_write_text, jsonable, provenance, read_json
from featalign.model_set import ModelSet
from featalign.models import ModelSpec, load_model
from featalign.organisms.build import build_organisms
from featalign.organisms.tasks import DOMAINS, parse_domains
from featalign.tasks import VERIFIERS, TaskSet

PUBLISHED = {"in_domain": (2.9, 3.10), "out_of_domain": (-3.2, 1.32)}


@dataclass
class TransferConfig(JsonConfig):
    out: str = "runs/examples/transfer"
    organisms_preset: str = "default"
    organisms_dir: str | None = None
    domains: str = "count,sub"  # single-domain post-training runs (the first is the organisms' default)
    skip_build: bool = False  # only the observational part
    pairs: str | None = None  # base:tuned[:train_task],... (model folders; hub ids through a model set)
    model_set: str | None = None  # analyze's model-set options: base vs every other model of the set
    model: tuple[str, ...] = ()
    train_tasks: str | None = None  # what the model set's tuned models were trained on
    tasks: str | None = None  # the observational part's task set; default: every organisms domain
    verifier: str | None = None  # JSONL rows: exact | numeric | final_answer | ... (default: the file's, else exact)
    n_prompts: int = 1000  # per task, for the observational part (the organisms use their build's evaluation)
    threads: int = 1

    def __post_init__(self) -> None:
        from featalign.organisms.config import PRESETS

        self.model = tuple(self.model)
        check_choice("--organisms-preset", self.organisms_preset, sorted(PRESETS))
        if self.verifier is not None:
            check_choice("--verifier", self.verifier, sorted(VERIFIERS))
        check_positive("--n-prompts", self.n_prompts)
        check_positive("--threads", self.threads)
        try:
            if not parse_domains(self.domains) and not self.skip_build:
                raise ValueError("--domains names no domain")
        except ValueError as e:
            raise UsageError(str(e)) from e
        if self.skip_build and not self.pairs and not self.uses_model_set:
            raise UsageError("nothing to do: --skip-build true needs --pairs or a model set (--model / --model-set)")
        if self.train_tasks and not self.uses_model_set:
            raise UsageError("--train-tasks names what a model set's tuned models were trained on: add --model / "
                             "--model-set (a --pairs entry names its own as base:tuned:train_task)")
        specs = [s for s in (self.pairs or "").split(",") if s]
        if len(set(specs)) != len(specs):
            raise UsageError(f"--pairs names a pair twice: {sorted({s for s in specs if specs.count(s) > 1})}")
        for spec in specs:
            parts = spec.split(":")
            if len(parts) not in (2, 3) or not all(parts):
                raise UsageError(f"--pairs entries must be base:tuned or base:tuned:train_task, got {spec!r}")
            for d in parts[:2]:
                check_exists(d, "--pairs model folder", "folder")

    @property
    def uses_model_set(self) -> bool:
        return bool(self.model or self.model_set)


HELP = {
    "out": "output folder", "organisms_preset": "organisms preset", "organisms_dir": "organisms folder",
    "domains": "interventional part (organisms only): comma-separated domains, one SFT + one RL run on each "
               "(built if missing, same base and recipe)",
    "skip_build": "skip the interventional organisms part (only the observational pairs)",
    "pairs": "comma-separated base:tuned[:train_task] model folders for the observational comparison "
             "(hub ids: use a model set)",
    "model_set": ANALYZE_HELP["model_set"] + ": its base against every other model (observational part)",
    "model": "a model NAME=DIR[@revision] (role base, rl, sft, ...): the base against every other model "
             "(observational part)",
    "train_tasks": "comma-separated tasks the model set's tuned models were trained on (in/out-of-task CMH)",
    "tasks": "observational part's task set: a JSONL file ({prompt, answer[, task, split]} rows, several tasks) or "
             "organisms:dom,... (default: every organisms domain); the interventional part always uses the organisms",
    "verifier": "verifier of a JSONL task set: exact | numeric | final_answer | multiple_choice (default: a task-set file's own, else exact)",
    "n_prompts": "eval prompts per task for the observational part", "threads": "torch threads",
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


@dataclass
class Pair:
    """One observational comparison: a tuned model against its base, and the task(s) it was trained on."""

    name: str
    base: ModelSpec
    tuned: ModelSpec
    train: tuple[str, ...] = ()
    from_pairs: bool = True  # a --pairs entry (pooled per base) rather than one of a model set

    @property
    def label(self) -> str:
        """A short name for figures: the tuned folder's last two parts (a model set's pair: its name)."""
        if not self.from_pairs:
            return self.name
        return "/".join(Path(self.tuned.path).parts[-2:]) + (f" [{','.join(self.train)}]" if self.train else "")


def observational_inputs(cfg: TransferConfig) -> tuple[TaskSet, list[Pair]]:
    """The task set and the pairs, checked against each other before any model is loaded: the model set by
    `ModelSet.resolve` (analyze's options), every training task a task of the set."""
    task_set = load_task_set(cfg.tasks, cfg.n_prompts, cfg.verifier)
    if task_set is None:  # every organisms domain, on its fixed eval split
        task_set = TaskSet.organisms(None, cfg.n_prompts)

    pairs = []
    for entry in filter(None, (cfg.pairs or "").split(",")):  # checked in TransferConfig
        b, t, *train = entry.split(":")
        pairs.append(Pair(f"{b} -> {t}" + (f" [{train[0]}]" if train else ""), ModelSpec("base", b),
                          ModelSpec("tuned", t), tuple(train)))
    if cfg.uses_model_set:
        try:
            model_set = ModelSet.resolve(cfg.model_set, cfg.model)
            base = model_set.role("base")
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise UsageError(str(e.args[0] if isinstance(e, KeyError) else e)) from e
        tuned = [m for m in model_set.models if m is not base]
        if not tuned:
            raise UsageError(f"the model set has only its base ({base.name}): add the tuned models (--model rl=DIR)")
        train = tuple(t.strip() for t in (cfg.train_tasks or "").split(",") if t.strip())
        pairs += [Pair(f"{base.name} -> {m.name}", base, m, train, from_pairs=False) for m in tuned]
    unknown = sorted({t for p in pairs for t in p.train} - set(task_set.names))
    if unknown:
        raise UsageError(f"training task(s) {unknown} are not tasks of the task set ({task_set.names}); "
                         "pass the task set they belong to with --tasks")
    return task_set, pairs


def pairs_part(cfg: TransferConfig, task_set: TaskSet, pairs: list[Pair], out: Path, lines: list[str]) -> dict:
    """Score every model of `pairs` once on every task and compare each tuned model with its base."""
    names = task_set.names
    scored: dict[tuple[str, str | None], dict[str, np.ndarray]] = {}

    def score(m: ModelSpec) -> dict[str, np.ndarray]:
        key = (m.path, m.revision)
        if key not in scored:
            model = load_model(m.path, revision=m.revision)
            scored[key] = evaluate_tasks(model, model.tokenizer, task_set, desc=f"eval {Path(m.path).name}")
        return scored[key]

    res: dict = {"tasks": names, "n_prompts": {t.name: len(t) for t in task_set}, "pairs": {}, "transfer": {},
                 "pooled_in_out_cmh": {}}
    lines += ["## Observational comparison of (base, tuned) pairs", "",
              f"Tasks {names} ({cfg.tasks or 'the organisms domains'}; up to {cfg.n_prompts} eval prompts each); "
              "delta in points (tuned - base), exact McNemar p in parentheses.", "",
              "| pair | " + " | ".join(names) + " | CMH OR over tasks [95% CI] |",
              "|---|" + "---|" * (len(names) + 1)]
    in_out_lines: list[str] = []
    for p in pairs:
        b, t = score(p.base), score(p.tuned)
        tests = {d: mcnemar_paired(b[d], t[d]) for d in names}
        deltas = {d: 100 * float(t[d].mean() - b[d].mean()) for d in names}
        pooled = cmh_odds_ratio([(b[d], t[d]) for d in names])
        r = {"base": p.base.path, "tuned": p.tuned.path, "train_tasks": list(p.train) or None,
             "base_accuracy": {d: float(b[d].mean()) for d in names}, "delta_points": deltas,
             "mcnemar": {d: vars(v) for d, v in tests.items()}, "cmh_all_tasks": vars(pooled)}
        lines.append(f"| {p.name} | " + " | ".join(f"{deltas[d]:+.1f} ({format_p(tests[d].p_value)})" for d in names)
                     + f" | {pooled.odds_ratio:.2f} [{pooled.ci_low:.2f}, {pooled.ci_high:.2f}] |")
        if p.train:
            cmh = in_out_domain_cmh(b, {p.train: t})
            r["in_out_cmh"] = {k: vars(v) for k, v in cmh.items()}
            in_out_lines += ["", f"In/out of task for `{p.name}` (trained on {list(p.train)}):", "", *CMH_HEAD,
                             *cmh_rows(cmh)]
        res["pairs"][p.name] = r
    lines += in_out_lines
    by_base: dict[tuple[str, str | None], list[Pair]] = {}
    for p in pairs:
        by_base.setdefault((p.base.path, p.base.revision), []).append(p)
    for (path, _), group in by_base.items():
        mat = transfer_matrix(score(group[0].base), {p.name: score(p.tuned) for p in group}, names)
        res["transfer"][path] = {"tuned": [p.name for p in group], "tasks": names, "delta_points": mat.tolist()}
        fig = out / "figures" / f"transfer_pairs_{len(res['transfer'])}.png"
        plot_transfer_heatmap(mat, [p.label for p in group], names, fig,
                              title=f"delta vs base {'/'.join(Path(path).parts[-2:])} (points)")
        trained = [p for p in group if p.train and p.from_pairs]
        if len(trained) > 1:  # several --pairs runs of one base: the study's pooled in/out-of-task strata
            cmh = in_out_domain_cmh(score(group[0].base), [(p.train, score(p.tuned)) for p in trained])
            res["pooled_in_out_cmh"][path] = {k: vars(v) for k, v in cmh.items()}
            lines += ["", f"In/out of task pooled over the {len(trained)} pairs of base `{path}`:", "", *CMH_HEAD,
                      *cmh_rows(cmh)]
        lines += ["", f"Figure: `figures/{fig.name}` (base `{path}`)."]
    lines.append("")
    return res


def main(argv: list[str] | None = None) -> dict:
    cfg = cli_config(TransferConfig, HELP, "reproduce_transfer_study.py", __doc__, argv, repeated=("model",))
    check_out_dir(cfg.out)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    observational = cfg.pairs or cfg.uses_model_set
    task_set, pairs = observational_inputs(cfg) if observational else (None, [])  # refused before --out is made
    out = start_run(cfg, cfg.out)
    lines = ["# Cross-domain transfer (reproduction of arXiv 2506.19733)", ""]
    results: dict = {"config": cfg.to_dict(), **provenance()}
    if not cfg.skip_build:
        results["organisms"] = organisms_part(cfg, out, lines)
    if observational:
        results["pairs"] = pairs_part(cfg, task_set, pairs, out, lines)
    lines.append(f"Total time: {time.time() - t0:.0f} s.")
    report = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", report)
    results["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "results.json", jsonable(results))
    print(report)
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, "reproduce_transfer_study.py", sys.argv[1:]))
