"""Predict where RL will transfer, from the base model's features, before running RL — and score the
prediction against measured transfer (`featalign.analysis.transfer_prediction`).

1. Ground truth: single-domain RL (GRPO) and SFT from the same base on every domain of `--domains` (the
   organisms: built here into a copy of the organisms folder, as `reproduce_transfer_study.py` does), each
   evaluated on every domain: the measured transfer matrices (accuracy delta, log odds ratio per pair). On your
   own models: analyze's model-set options (`--model base=DIR --model rl-math=DIR ...` or `--model-set FILE`)
   with the tuned models named `rl-<task>` / `sft-<task>` (each trained on one task of `--tasks`), all
   scored here.
2. The base model's features: a 1-model crosscoder (an SAE; BatchTopK by default) trained on the base's
   activations at the middle residual hook (the organisms' domain mixture, or the task set's text).
3. Per domain, the base's profile on `--n-prompts` prompts (mean latent activation, mean residual, top latents
   by attribution on its correct answers); domain-by-domain similarity by each measure and two baselines
   that need no dictionary (prompt n-gram overlap, residual cosine).
4. Spearman between each similarity and the measured transfer over the off-diagonal pairs, with a
   permutation null (domain labels shuffled) and a bootstrap interval over domains; the same for SFT.

    python examples/predict_transfer.py                                   # default organisms, every domain
    python examples/predict_transfer.py --domains add,sub,count,sort      # fewer RL runs
    python examples/predict_transfer.py --model base=B --model rl-math=R1 --model rl-code=R2 \
        --model sft-math=S1 --tasks my_tasks.jsonl --verifier numeric

Outputs in `--out`: config.json, results.json, report.md, figures/ (scatter per measure, matrices side by side).
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
from featalign.analysis.config import AnalyzeConfig
from featalign.analysis.inputs import (
    load_task_set,
    mixture_activations,
    mixture_domains,
    open_organisms,
    store_activations,
    text_sources,
)
from featalign.analysis.training import train_or_load
from featalign.analysis.transfer_prediction import (
    BASELINES,
    PredictionConfig,
    best_measure,
    domain_profiles,
    measured_transfer,
    plot_matrices,
    plot_scatter,
    score_all,
    similarity_matrices,
)
from featalign.cli import UsageError, check_out_dir, check_positive, run_cli
from featalign.config import JsonConfig, cli_config, start_run
from featalign.evaluation import eval_problems, evaluate_tasks
from featalign.io import atomic_write_json, atomic_write_text, jsonable, provenance, read_json
from featalign.model_set import ModelSet
from featalign.models import ModelSpec, default_hook_for, load_model
from featalign.organisms.build import build_organisms
from featalign.organisms.tasks import parse_domains
from featalign.tasks import TaskSet, organisms_task


@dataclass
class PredictConfig(JsonConfig):
    out: str = "runs/examples/predict_transfer"
    organisms_preset: str = "default"
    organisms_dir: str | None = None
    domains: str | None = None  # organisms: single-domain RL + SFT runs (default: every pretraining domain)
    model_set: str | None = None  # your own models (analyze's model-set options): base + rl-<task> / sft-<task>
    model: tuple[str, ...] = ()
    tasks: str | None = None
    verifier: str | None = None
    n_prompts: int = 200  # per domain: the base's profile (and the scoring of your own models)
    hook: str | None = None
    variant: str = "batchtopk"
    n_latents: int = 1024
    k: int = 16
    steps: int = 600
    n_tokens: int = 40_000
    positions: str = "all"
    top_k: int = 32
    attribution: bool = True
    n_permutations: int = 5000
    n_boot: int = 2000
    seed: int = 0
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("n_prompts", "n_latents", "k", "steps", "n_tokens", "top_k", "n_permutations", "n_boot"):
            check_positive(f"--{name.replace('_', '-')}", getattr(self, name))
        if self.positions not in ("all", "last"):
            raise UsageError(f"--positions must be all or last, got {self.positions!r}")
        self.model = tuple(self.model)
        if self.user_models and not self.tasks:
            raise UsageError("your own models need the task set their rl-<task> / sft-<task> models were trained on: "
                             "add --tasks FILE")
        if not self.user_models and self.domains is not None:
            try:
                if len(parse_domains(self.domains)) < 2:
                    raise ValueError("--domains needs at least two domains (transfer is between domains)")
            except ValueError as e:
                raise UsageError(str(e)) from e

    @property
    def user_models(self) -> bool:
        return bool(self.model or self.model_set)


def tuned_models(model_set: ModelSet) -> dict[str, dict[str, ModelSpec]]:
    """{'rl': {task: spec}, 'sft': {task: spec}} from a model set's names `rl-<task>` / `sft-<task>` (the
    organisms' folder names): each tuned model trained on one task."""
    out: dict[str, dict[str, ModelSpec]] = {}
    for m in model_set.models:
        kind, sep, task = m.name.partition("-")
        if sep and kind in ("rl", "sft") and task:
            out.setdefault(kind, {})[task] = m
    if "rl" not in out:
        raise UsageError(f"the model set names no RL model rl-<task> (names: {model_set.names}); e.g. "
                         "--model base=B --model rl-math=R1 --model rl-code=R2 [--model sft-math=S1]")
    return out


HELP = {
    "out": "output folder", "organisms_preset": "organisms preset", "organisms_dir": "organisms folder",
    "domains": "organisms: comma-separated domains, one RL + one SFT run on each (default: every domain)",
    "model_set": ANALYZE_HELP["model_set"] + ": a base and tuned models named rl-<task> / sft-<task>",
    "model": "a model NAME=DIR[@revision]: the base (base=DIR) and tuned models named rl-<task> / sft-<task>, "
             "each trained on one task of --tasks",
    "tasks": "your own models' task set (a JSONL / task-set file with several tasks)",
    "verifier": "verifier of a JSONL task set (default: the file's own, else exact)",
    "n_prompts": "prompts per domain for the base's profile (and for scoring your own models; the organisms' "
                 "transfer is measured on all of their build's eval prompts)",
    "hook": "hook of the base's features (default: the middle residual stream)",
    "variant": "variant of the base SAE (a 1-model crosscoder)", "n_latents": "latents of the base SAE",
    "k": "batchtopk k", "steps": "training steps of the base SAE", "n_tokens": "training tokens of the base SAE",
    "positions": "pooled prompt positions of a profile: all | last",
    "top_k": "latents per domain in the attribution measure",
    "attribution": "compute the attribution measure (gradients on the base's correct answers)",
    "n_permutations": "label shuffles of the permutation null", "n_boot": "bootstrap resamples of domains",
    "seed": "seed", "threads": "torch threads", "progress": "progress bars",
}


@dataclass
class GroundTruth:
    """The base's folder, the tasks (problems aligned with the correctness arrays) and per-sample correctness."""

    base_dir: str
    task_set: TaskSet
    base: dict[str, np.ndarray]
    tuned: dict[str, dict[str, dict[str, np.ndarray]]]  # kind -> train task -> eval task -> correctness
    source: dict
    mixture_domains: tuple[str, ...] | None = None  # the organisms' text mixture (`mixture_domains`)


def organisms_ground_truth(cfg: PredictConfig, out: Path) -> GroundTruth:
    """Single-domain RL and SFT on every domain, in a copy of the organisms folder (the source keeps its own)."""
    src = open_organisms(cfg.organisms_preset, cfg.organisms_dir)
    domains = parse_domains(cfg.domains) if cfg.domains else list(src.config.pretrain_domains)
    root = out / "organisms"
    if not (root / "config.json").exists():
        shutil.copytree(src.root, root, ignore=shutil.ignore_patterns("_state"), dirs_exist_ok=True)
    org = build_organisms(dataclasses.replace(src.config, post_train_domains=tuple(domains)), root)
    eval_names = list(org.config.pretrain_domains)
    load = lambda n: {d: np.array(v, bool) for d, v in read_json(org.eval_dir / f"{n}.json")["correct"].items()}  # noqa: E731
    n_eval = read_json(org.eval_dir / "base.json")["n_per_domain"]
    task_set = TaskSet({d: organisms_task(d, eval_problems(d, n_eval)) for d in eval_names})  # the build's eval
    base = load("base")
    tuned = {kind: {d: load(f"{kind}-{d}") for d in domains} for kind in ("rl", "sft")}
    source = {"organisms": org.config.to_dict(), "domains": domains}
    return GroundTruth(str(org.base_dir), task_set, base, tuned, source, mixture_domains(org))


@dataclass
class UserInputs:
    """Your task set and models, resolved and checked against each other before anything is loaded or written."""

    task_set: TaskSet
    model_set: ModelSet
    base: ModelSpec
    tuned: dict[str, dict[str, ModelSpec]]


def user_inputs(cfg: PredictConfig) -> UserInputs:
    task_set = load_task_set(cfg.tasks, cfg.n_prompts, cfg.verifier)
    try:
        model_set = ModelSet.resolve(cfg.model_set, cfg.model)
        base = model_set.role("base")
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise UsageError(str(e.args[0] if isinstance(e, KeyError) else e)) from e
    tuned = tuned_models(model_set)
    unknown = sorted({t for d in tuned.values() for t in d} - set(task_set.names))
    if unknown:
        raise UsageError(
            f"rl-<task> / sft-<task> models name tasks {unknown} that are not in --tasks ({task_set.names})"
        )
    return UserInputs(task_set, model_set, base, tuned)


def user_ground_truth(cfg: PredictConfig, inputs: UserInputs) -> GroundTruth:
    """Your base and tuned models, each scored on every task of the task set."""

    def scored(m: ModelSpec) -> dict[str, np.ndarray]:
        model = load_model(m.path, revision=m.revision)
        return evaluate_tasks(model, model.tokenizer, inputs.task_set, desc=f"eval {m.name}")

    tuned = {kind: {t: scored(m) for t, m in specs.items()} for kind, specs in inputs.tuned.items()}
    source = {"tasks": cfg.tasks, "models": [m.to_dict() for m in inputs.model_set.models]}
    return GroundTruth(inputs.base.path, inputs.task_set, scored(inputs.base), tuned, source)


def base_sae(cfg: PredictConfig, gt: GroundTruth, hook: str, out: Path):
    """A 1-model crosscoder on the base's activations: what the prediction may use before any RL run."""
    if cfg.user_models:
        train_src, _ = text_sources(cfg, gt.task_set)
        x = store_activations(out / "activations", [ModelSpec("base", gt.base_dir, role="base")], hook, cfg.n_tokens,
                              train_src, progress=cfg.progress)
    else:
        x = mixture_activations(out / "activations", {"base": gt.base_dir}, hook, cfg.n_tokens, "train", cfg.seed,
                                cfg.progress, gt.mixture_domains)
    acfg = AnalyzeConfig(out=str(out), variant=cfg.variant, n_latents=cfg.n_latents, k=cfg.k, steps=cfg.steps,
                         seed=cfg.seed, progress=cfg.progress, sparsity_coef=1.0)
    return train_or_load(out / "base_sae", ("base",), x, hook, acfg)


def markdown(res: dict) -> str:
    lines = ["# Predicting RL transfer from the base model's features", "",
             f"Tasks: {res['tasks']}; trained on: {res['train']['rl_delta']}. Spearman over the off-diagonal "
             "pairs (trained-on task, another eval task); p: one-sided permutation test (domain labels shuffled); "
             "95% interval: bootstrap over domains. Baselines (no dictionary): " + ", ".join(BASELINES) + ".", ""]
    for t, scores in res["scores"].items():
        n = next(iter(scores.values()))["n_pairs"] if scores else 0
        lines += [f"## {t} ({n} pairs)", "", "| measure | Spearman [95% CI] | permutation p | null mean |",
                  "|---|---|---|---|"]
        for m, s in scores.items():
            lines.append(f"| {m}{' (baseline)' if m in BASELINES else ''} | {s['spearman']:+.2f} "
                         f"[{s['ci'][0]:+.2f}, {s['ci'][1]:+.2f}] | {s['p_permutation']:.3g} | {s['null_mean']:+.2f} |")
        best, best_any = res["best"][t]["features"], res["best"][t]["any"]
        lines += ["", f"Best feature measure: {best}; best overall: {best_any}.", ""]
    lines += ["Figures: `figures/scatter_<transfer>.png`, `figures/matrices.png`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    cfg = cli_config(PredictConfig, HELP, "predict_transfer.py", __doc__, argv, repeated=("model",))
    check_out_dir(cfg.out)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    inputs = user_inputs(cfg) if cfg.user_models else None  # refused before anything is written
    out = start_run(cfg, cfg.out)
    gt = user_ground_truth(cfg, inputs) if inputs is not None else organisms_ground_truth(cfg, out)
    hook = cfg.hook or default_hook_for(gt.base_dir)
    cc = base_sae(cfg, gt, hook, out)
    pcfg = PredictionConfig(positions=cfg.positions, top_k=cfg.top_k, n_permutations=cfg.n_permutations,
                            n_boot=cfg.n_boot, seed=cfg.seed)
    model = load_model(gt.base_dir)
    # the profiles read the first --n-prompts problems of each task; the transfer is measured on all of them
    profile_tasks = gt.task_set.head(cfg.n_prompts)
    base_correct = {t.name: gt.base[t.name][: len(t)] for t in profile_tasks}
    profiles = domain_profiles(cc, model, profile_tasks, base_correct if cfg.attribution else None, 0, pcfg)
    names = gt.task_set.names
    sims = similarity_matrices(profiles, pcfg)
    transfers = {}  # name -> (matrix, training task of each row)
    for kind, tuned in gt.tuned.items():
        m = measured_transfer(gt.base, tuned, names)
        for stat, key in (("delta", "delta_points"), ("log_or", "log_odds_ratio")):
            transfers[f"{kind}_{stat}"] = (m[key], list(tuned))
    scores = score_all(sims, transfers, names, pcfg)
    deltas = [t for t in ("rl_delta", "sft_delta") if t in transfers]
    for t in deltas:
        mat, train = transfers[t]
        plot_scatter(sims, mat, train, names, scores[t], out / "figures" / f"scatter_{t}.png",
                     title=f"base-model similarity vs measured {t}")
    best = {t: {"features": best_measure(s), "any": best_measure(s, include_baselines=True)} for t, s in scores.items()}
    panels = {f"measured {t}": (transfers[t][0], transfers[t][1], names) for t in deltas}
    if best["rl_delta"]["features"]:
        panels[f"similarity: {best['rl_delta']['features']}"] = (sims[best["rl_delta"]["features"]], names, names)
    plot_matrices(panels, out / "figures" / "matrices.png", title="measured transfer and the best predictor")
    res = {"config": cfg.to_dict(), **provenance(), "ground_truth": gt.source, "hook": hook, "tasks": names,
           "train": {t: train for t, (_, train) in transfers.items()},
           "similarity": {m: s.tolist() for m, s in sims.items()},
           "transfer": {t: mat.tolist() for t, (mat, _) in transfers.items()},
           "scores": {t: {m: dataclasses.asdict(s) for m, s in sc.items()} for t, sc in scores.items()},
           "best": best, "seconds": round(time.time() - t0, 1)}
    atomic_write_json(out / "results.json", jsonable(res))
    atomic_write_text(out / "report.md", markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    sys.exit(run_cli(main, "predict_transfer.py", sys.argv[1:]))
