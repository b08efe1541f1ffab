"""Reproduce the feature-evolution result of the feature-level study (arXiv 2604.25011) on featalign's organisms,
or on any base model and its RL / SFT checkpoint series.

For each checkpoint series (the organisms: SFT and RL, 5 checkpoints each) one crosscoder aligns the base
and every checkpoint (joint mode; `--drift-mode pairwise|both` adds one base-vs-checkpoint crosscoder per
checkpoint). For each checkpoint the top-k features most specific to it (largest decoder-norm share)
are compared with the previous checkpoint's top-k:

- overlap_t = |top-k(t) ∩ top-k(t-1)| / k between successive checkpoints;
- stabilisation checkpoint of a feature: the first checkpoint after which its specificity stays within
  tolerance and its decoder direction stays aligned with the final one;
- SFT vs RL (when both series are given): the difference of median stabilisation checkpoints (bootstrap CI)
  and a one-sided Mann-Whitney test that SFT's features stabilise earlier.

Published (Qwen, math post-training): SFT has many highly specialised features with high overlap early
(they stabilise early); RL has few extreme features with low overlap (they keep evolving).

The models and the text are read exactly as `python -m featalign.analyze` reads them (its model-set options,
`featalign.analysis.inputs`): the organisms by default, else `--model NAME=DIR` flags (a base and an rl model
are required, as for analyze; sft optional) with `--series ROLE=DIR1,DIR2,...` checkpoints in training order,
or a `--model-set FILE`. The activations are cached on `--tasks` (a JSONL task set: its train rows, else all
rows) or, by default, on the organisms' domain mixture.

    python examples/reproduce_drift.py                                  # default organisms
    python examples/reproduce_drift.py --model base=B --model rl=R3 --series rl=R1,R2,R3 \
        --model sft=S3 --series sft=S1,S2,S3 --tasks my_tasks.jsonl     # any checkpoints, any text
    python examples/reproduce_drift.py --model-set study.yaml --tasks my_tasks.jsonl
    python examples/reproduce_drift.py --help

Outputs in `--out`: config.json, results.json, report.md, figures/drift.png; reruns reuse the cache.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from featalign.analysis import plots
from featalign.analysis.config import HELP as ANALYZE_HELP
from featalign.analysis.config import AnalyzeConfig, check_shared_settings
from featalign.analysis.drift import SeriesError
from featalign.analysis.inputs import (
    Activations, load_task_set, mixture_domains, resolve_models, store_activations, text_sources,
)
from featalign.analysis.layers import hook_choice_markdown, resolve_hook
from featalign.analysis.stages import NO_SERIES, drift_nulls_markdown, drift_study
from featalign.cli import UsageError, check_out_dir, run_cli
from featalign.config import JsonConfig, cli_config, start_run
from featalign.io import atomic_write_json, atomic_write_text, jsonable, provenance

PUBLISHED = {"sft": "high overlap early; many specialised features stabilise early",
             "rl": "low overlap; few extreme features that keep evolving"}


@dataclass
class DriftExampleConfig(JsonConfig):
    out: str = "runs/examples/drift"
    organisms_preset: str = "default"
    organisms_dir: str | None = None
    model_set: str | None = None  # the model-set options of analyze; none given: the organisms
    model: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    tasks: str | None = None  # the activations' text; default: the organisms' domain mixture
    hook: str | None = AnalyzeConfig.hook  # analyze's default, one definition (auto: measured)
    layer_tokens: int = AnalyzeConfig.layer_tokens
    n_tokens: int = 40_000
    eval_tokens: int = 10_000
    variant: str = "batchtopk"
    n_latents: int = 1024
    k: int = 16
    steps: int = 600
    top_k: int = 50
    drift_mode: str = "joint"
    drift_nulls: bool = True  # identical-copies and shuffled-order nulls (analyze's --drift-nulls)
    drift_permutations: int = 1000
    seed: int = 0
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        self.model, self.series = tuple(self.model), tuple(self.series)
        check_shared_settings(self)


HELP = {
    "out": "output folder", "organisms_preset": ANALYZE_HELP["organisms_preset"],
    "organisms_dir": ANALYZE_HELP["organisms_dir"], "model_set": ANALYZE_HELP["model_set"],
    "model": ANALYZE_HELP["model"] + "; drift needs base and rl (the series' last checkpoint, say)",
    "series": ANALYZE_HELP["series"],
    "tasks": "a task set whose text the activations are cached on: a JSONL file ({prompt, answer[, task, split]} "
             "rows; its train rows, else all) or organisms:dom,... (default: the organisms' domain mixture)",
    "hook": ANALYZE_HELP["hook"],
    "layer_tokens": ANALYZE_HELP["layer_tokens"],
    "n_tokens": "activation tokens per model", "eval_tokens": "tokens used to decide which latents fire",
    "variant": "crosscoder variant", "n_latents": "latents", "k": "batchtopk k", "steps": "crosscoder steps",
    "top_k": "top-k model-specific features compared between checkpoints",
    "drift_mode": "joint | pairwise | both",
    "drift_nulls": ANALYZE_HELP["drift_nulls"], "drift_permutations": ANALYZE_HELP["drift_permutations"],
    "seed": "seed", "threads": "torch threads", "progress": "progress bars",
}


def main(argv: list[str] | None = None) -> dict:
    cfg = cli_config(DriftExampleConfig, HELP, "reproduce_drift.py", __doc__, argv, repeated=("model", "series"))
    check_out_dir(cfg.out)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    # Models, hook and text are resolved (and refused) before any other work, by analyze's own helpers.
    acfg = check_shared_settings(cfg)
    models = resolve_models(acfg)
    if not models.series:
        raise UsageError(f"drift {NO_SERIES}")
    try:
        series = models.checkpoint_series()
    except SeriesError as e:
        raise UsageError(f"--series: {e}") from e
    short = sorted(k for k, v in series.items() if len(v.checkpoints) < 2)
    if short:
        raise UsageError(f"--series {short}: drift compares successive checkpoints, so a series needs at least 2")
    train_text, _ = text_sources(acfg, load_task_set(cfg.tasks), mixture_domains(models.organisms))
    hook, hook_choice = resolve_hook(acfg, models, train_text)  # --hook auto measures (into OUT/activations/layers)
    text = cfg.tasks or "the organisms' domain mixture"
    where = models.describe()
    out = start_run(cfg, cfg.out)

    # one store: the trio and every checkpoint (a checkpoint that is a trio model is read from its column)
    specs, aliases = models.columns(with_series=True)
    x = store_activations(out / "activations" / "train", specs, hook, cfg.n_tokens, train_text,
                          progress=cfg.progress)
    acts = Activations(x, [s.name for s in specs], aliases)
    res, summary = drift_study(series, acts.columns, hook, acfg, out / "crosscoders")
    plots.drift_side_by_side(res, out / "figures" / "drift.png")
    if acfg.drift_nulls:
        plots.drift_nulls(summary, out / "figures" / "drift_nulls.png")

    lines = ["# Feature drift over checkpoints (reproduction of arXiv 2604.25011, feature evolution)", "",
             "Models: " + ", ".join(f"{k} `{v}`" for k, v in where["trio"].items()) + "; series: "
             + "; ".join(f"{k}: " + ", ".join(f"`{p}`" for p in v) for k, v in where["series"].items())
             + f". Text: {text}.", "",
             f"Hook `{hook}`; {cfg.variant} crosscoders, {cfg.n_latents} latents, {cfg.steps} steps, "
             f"{cfg.n_tokens} tokens per model; top-{cfg.top_k} model-specific features.", "",
             *hook_choice_markdown(hook_choice),
             "| series | top-k overlap between successive checkpoints | mean | stabilisation checkpoint "
             "(median [95% CI]) | published |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        if not isinstance(s, dict) or "overlap" not in s:
            continue
        ov = s["overlap"]
        ci = s["stabilisation_median_95"]
        lines.append(f"| {name} | {', '.join(f'{v:.2f}' for v in ov)} | {s['mean_overlap']:.2f} | "
                     f"{s['stabilisation_median']} [{ci[0] if ci else '-'}, {ci[1] if ci else '-'}] | "
                     f"{PUBLISHED.get(name.split('-')[0], '')} |")
    lines += drift_nulls_markdown(summary)
    if "sft_vs_rl" in summary:
        c = summary["sft_vs_rl"]
        lines += ["", f"Median stabilisation SFT - RL: {c['median_diff']:+.1f} checkpoints, 95% CI "
                  f"[{c['median_diff_95'][0]:+.1f}, {c['median_diff_95'][1]:+.1f}]; one-sided Mann-Whitney p "
                  f"(SFT earlier) = {c['mannwhitney_p_a_earlier']:.3g}. Mean overlap SFT {c['mean_overlap_a']:.2f} "
                  f"vs RL {c['mean_overlap_b']:.2f}."]
    figures = "`figures/drift.png`" + (", `figures/drift_nulls.png`" if acfg.drift_nulls else "")
    lines += ["", f"Figures: {figures}.", "", f"Total time: {time.time() - t0:.0f} s."]
    report = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", report)
    results = {"config": cfg.to_dict(), **provenance(), "models": where, "hook": hook, "tasks": text,
               **({"hook_choice": hook_choice} if hook_choice else {}), "drift": summary,
               "seconds": round(time.time() - t0, 1)}
    atomic_write_json(out / "results.json", jsonable(results))
    print(report)
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, "reproduce_drift.py", sys.argv[1:]))
