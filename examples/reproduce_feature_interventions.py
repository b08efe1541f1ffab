"""Reproduce the causal test of the feature-level study (arXiv 2604.25011) on featalign's organisms,
or on any base / RL model pair and task set.

1. Score base and RL on out-of-domain tasks (`--n-prompts` eval prompts each).
2. Cache activations of base and RL at one middle residual layer; train a base/RL crosscoder.
3. RL-success features: on samples where the base fails and RL succeeds,
   Score_k = mean(f_k(RL) - f_k(base)); keep features above `--success-frac` of the per-task max; intersect
   across the selection tasks. If the intersection has fewer than `--min-features` features, fall back
   to the features selected in at least half the tasks, then to the top `--min-features` by the mean
   max-normalised score (the rule used is printed and saved).
4. Ablate the set in the RL model; steer the base along the RL decoder directions of the set
   (`--steer-coef` x each feature's typical activation). Each edit against `--n-controls` random feature
   sets matched on firing frequency, with exact McNemar and paired bootstrap intervals; accuracy on all
   prompts and on the base-fail/RL-success subset; selection tasks and held-out tasks reported apart.
5. A steering-coefficient sweep (accuracy vs coefficient, with a matched-control band).

Published (Qwen models, real math RL): ablation costs the RL model 14-46 points; amplification gains
the base 12-56 points; held-out tasks move too.

The models and the text are read exactly as `python -m featalign.analyze` reads them (its model-set options,
`featalign.analysis.inputs`): the organisms by default, else `--model base=DIR --model rl=DIR` (hub ids with
@revision) or a `--model-set FILE` with base and rl roles. `--tasks` (a JSONL task set, scored with
`--verifier`) gives both the tasks and the activations' text (its train rows, else all rows; eval rows for the
held-out statistics); by default the organisms' domains are scored and their domain mixture is the text.

    python examples/reproduce_feature_interventions.py                      # default organisms
    python examples/reproduce_feature_interventions.py --model base=B --model rl=R   # any two HF folders
    python examples/reproduce_feature_interventions.py --model-set study.yaml --tasks my_tasks.jsonl \
        --verifier numeric --selection-tasks a,b,c --held-out-tasks d
    python examples/reproduce_feature_interventions.py --help

Everything lands in `--out` (config.json, results.json, report.md, figures/); a rerun reuses the
cached activations and the trained crosscoder.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch

from featalign.analysis.attribution import encoder_stats
from featalign.analysis.success_features import (
    SuccessConfig, TaskData, success_features_for_models, success_mask,
)
from featalign.analysis.config import HELP as ANALYZE_HELP
from featalign.analysis.config import AnalyzeConfig, check_shared_settings
from featalign.analysis.inputs import (
    load_task_set, mixture_domains, resolve_models, store_activations, text_sources,
)
from featalign.analysis.layers import hook_choice_markdown, resolve_hook
from featalign.analysis.training import train_or_load
from featalign.cli import UsageError, check_choice, check_out_dir, check_positive, run_cli
from featalign.config import JsonConfig, cli_config, start_run
from featalign.models import load_model
from featalign.evaluation import score
from featalign.tasks import VERIFIERS, TaskSet
from featalign.interventions import SIZE_BINS_HELP, coefficient_sweep, run_intervention
from featalign.interventions import ablate, steer, typical_activation
from featalign.io import atomic_write_json, atomic_write_text, provenance
from featalign.organisms.tasks import parse_domains

PUBLISHED = {"ablate_rl": "-14 to -46 pts", "steer_base": "+12 to +56 pts"}


@dataclass
class FeatureInterventionConfig(JsonConfig):
    out: str = "runs/examples/feature_interventions"
    organisms_preset: str = "default"
    organisms_dir: str | None = None
    model_set: str | None = None  # analyze's model-set options (base and rl roles); none given: the organisms
    model: tuple[str, ...] = ()
    hook: str | None = AnalyzeConfig.hook  # analyze's default, one definition (auto: measured)
    layer_tokens: int = AnalyzeConfig.layer_tokens
    tasks: str | None = None  # a task set: a JSONL file of prompt/answer[/task] rows or organisms:dom,...
    verifier: str | None = None  # JSONL rows: exact | numeric | final_answer | ... (default: the file's, else exact)
    selection_tasks: str = "modsum,bool,sub,lookup"
    held_out_tasks: str = "compare,max"
    n_prompts: int = 500
    n_tokens: int = 40_000
    eval_tokens: int = 10_000
    variant: str = "batchtopk"
    n_latents: int = 1024
    k: int = 16
    sparsity_coef: float = AnalyzeConfig.sparsity_coef  # l1 / jumprelu: analyze's default, one definition
    steps: int = 600
    positions: str = "last"  # where the success scores read the latents (featalign.analysis POSITIONS)
    success_frac: float = 0.2
    min_samples: int = 8
    min_features: int = 8
    steer_coef: float = 1.0
    n_controls: int = 20
    n_bins: int = 10  # firing-frequency quantile bins for matching the controls
    size_bins: int = 0  # and size bins within each (0: frequency only, as every run before this option)
    sweep_coefs: str = "0.25,0.5,1,2"
    sweep_controls: int = 3
    seed: int = 0
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        self.model = tuple(self.model)
        check_shared_settings(self)
        if self.verifier is not None:
            check_choice("--verifier", self.verifier, sorted(VERIFIERS))
        try:  # organisms' domain names are checked here; a task file's names once it is loaded (in main)
            if self.tasks is None or self.tasks == "organisms" or self.tasks.startswith("organisms:"):
                sel, held = parse_domains(self.selection_tasks), parse_domains(self.held_out_tasks)
            else:
                sel, held = _split(self.selection_tasks), _split(self.held_out_tasks)
            coefs = [float(c) for c in _split(self.sweep_coefs)]
        except ValueError as e:
            raise UsageError(f"--selection-tasks / --held-out-tasks / --sweep-coefs: {e}") from e
        if not sel:
            raise UsageError("--selection-tasks names no task")
        if set(sel) & set(held):
            raise UsageError(f"tasks {sorted(set(sel) & set(held))} are both selection and held-out tasks: pick one")
        if not all(math.isfinite(c) for c in coefs + [self.steer_coef]):
            raise UsageError("--steer-coef and --sweep-coefs must be finite numbers")
        for name in ("n_prompts", "min_features", "n_bins"):
            check_positive(f"--{name.replace('_', '-')}", getattr(self, name))
        for name in ("n_controls", "sweep_controls", "size_bins"):
            check_positive(f"--{name.replace('_', '-')}", getattr(self, name), allow_zero=True)


HELP = {
    "out": "output folder", "organisms_preset": "organisms preset to open/build when no models are given",
    "organisms_dir": "organisms folder", "model_set": ANALYZE_HELP["model_set"] + " (roles base and rl)",
    "model": ANALYZE_HELP["model"] + "; needs base and rl", "hook": ANALYZE_HELP["hook"],
    "layer_tokens": ANALYZE_HELP["layer_tokens"],
    "tasks": "task set to score and to cache the activations' text on: a JSONL file (prompt, answer[, task, split]) "
             "or organisms:add,sub (default: the organisms' domains, text their domain mixture)",
    "verifier": "verifier of a JSONL task set: exact | numeric | final_answer | multiple_choice (default: a task-set file's own, else exact)",
    "selection_tasks": "out-of-domain tasks used to select the features",
    "held_out_tasks": "tasks never used for selection (reported apart)", "n_prompts": "eval prompts per task",
    "n_tokens": "crosscoder training tokens per model", "eval_tokens": "tokens for firing rates / typical activations",
    "variant": "crosscoder variant", "n_latents": "latents", "k": "batchtopk k", "steps": "crosscoder steps",
    "sparsity_coef": ANALYZE_HELP["sparsity_coef"],
    "positions": ANALYZE_HELP["positions"] + "; the edits apply at every position",
    "success_frac": "per-task threshold as a fraction of the max score",
    "min_samples": "fewest base-fail/RL-success samples for a selection task to count",
    "min_features": "fewest features to intervene on (fallback rules below this)",
    "steer_coef": "steering coefficient in units of each feature's typical activation",
    "n_controls": "matched random feature sets per edit",
    "n_bins": "firing-frequency quantile bins the controls are matched in",
    "size_bins": SIZE_BINS_HELP,
    "sweep_coefs": "comma-separated steering coefficients",
    "sweep_controls": "controls per sweep point", "seed": "seed", "threads": "torch threads",
    "progress": "progress bars",
}


def _split(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def choose_features(res, min_features: int) -> tuple[list[int], str]:
    """The intersection; else the majority set; else the top features by mean max-normalised score."""
    if len(res.features) >= min_features:
        return list(res.features), f"intersection over {len(res.tasks)} tasks"
    if len(res.majority) >= min_features:
        return list(res.majority), (f"intersection had {len(res.features)} < {min_features}: "
                                    "features selected in at least half of the tasks")
    norm = torch.stack([s / s.max().clamp(min=1e-12) for s in res.scores.values()]).mean(0)
    top = norm.topk(min_features).indices.tolist()
    return sorted(top), (f"intersection {len(res.features)}, majority {len(res.majority)} < {min_features}: "
                         f"top {min_features} by mean max-normalised Score_k over {len(res.tasks)} tasks")


def fmt_row(name: str, t, published: str) -> str:
    sub = (f"{100 * t.subset_acc_without:.0f} -> {100 * t.subset_acc_with:.0f} (n={t.subset_n}; control p "
           f"{t.subset_control_p:.2g})" if t.subset_n else "-")
    return (f"| {name} | {100 * t.acc_without:.1f} | {100 * t.acc_with:.1f} | {100 * t.delta:+.1f} "
            f"[{100 * t.ci_low:+.1f}, {100 * t.ci_high:+.1f}] | {t.mcnemar_p:.2g} | {t.control_p:.2g} | {sub} | "
            f"{published} |")


def main(argv: list[str] | None = None) -> dict:
    cfg = cli_config(FeatureInterventionConfig, HELP, "reproduce_feature_interventions.py", __doc__, argv,
                     repeated=("model",))
    check_out_dir(cfg.out)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    # Models, hook, tasks and text are resolved (and refused) before any other work, by analyze's own helpers.
    acfg = check_shared_settings(cfg)
    models = resolve_models(acfg)
    specs = [s for s in models.columns(with_series=False)[0] if s.name in ("base", "rl")]
    sel_names, held_names = _split(cfg.selection_tasks), _split(cfg.held_out_tasks)
    task_set = load_task_set(cfg.tasks, cfg.n_prompts, cfg.verifier)
    scored = task_set if task_set is not None else TaskSet.organisms(sel_names + held_names, cfg.n_prompts)
    unknown = sorted(set(sel_names + held_names) - set(scored.names))
    if unknown:
        raise UsageError(f"--selection-tasks / --held-out-tasks: {unknown} are not tasks of --tasks {cfg.tasks} "
                         f"(it has {scored.names})")
    train_text, eval_text = text_sources(acfg, task_set, mixture_domains(models.organisms))
    hook, hook_choice = resolve_hook(acfg, models, train_text)  # --hook auto measures (into OUT/activations/layers)
    out = start_run(cfg, cfg.out)

    # 1. correctness of base and RL on every task
    bm, rm = (load_model(s.path, revision=s.revision) for s in specs)
    tok = bm.tokenizer
    tasks = scored.subset(sel_names + held_names).tasks
    data = {t: TaskData(task.problems, score(bm, tok, task), score(rm, tok, task)) for t, task in tasks.items()}
    subset = {t: success_mask(d.base_correct, d.rl_correct) for t, d in data.items()}

    # 2. crosscoder on base + RL
    x = store_activations(out / "activations" / "train", specs, hook, cfg.n_tokens, train_text, progress=cfg.progress)
    xe = store_activations(out / "activations" / "eval", specs, hook, cfg.eval_tokens, eval_text,
                           progress=cfg.progress)
    cc = train_or_load(out / "crosscoder", ("base", "rl"), x, hook, acfg)
    # the RL model's latents (`encode_as`, the rule the edits and the success scores use): the controls
    # are matched on how often each latent fires in the model being edited (and with --size-bins on how much it
    # writes there when it fires)
    stats = encoder_stats(cc, xe, model="rl")
    freq, size = stats["firing_rate"], stats["mean_recon_norm"]
    t_cc = time.time() - t0

    # 3. RL-success features on the selection tasks only
    scfg = SuccessConfig(positions=cfg.positions, frac=cfg.success_frac, min_samples=cfg.min_samples, seed=cfg.seed)
    succ = success_features_for_models(cc, bm, rm, {t: data[t] for t in sel_names}, scfg, progress=cfg.progress)
    feats, rule = choose_features(succ, cfg.min_features)
    typical = typical_activation(cc, xe, feats, model="rl")
    alive = torch.isfinite(typical)
    if not alive.all():  # a feature that never fires on the eval activations has no typical activation
        feats = [f for f, a in zip(feats, alive.tolist()) if a]
        typical = typical[alive]
    print(f"RL-success features ({rule}): {len(feats)}: {feats}")

    # 4. ablate in RL, steer the base
    common = dict(n_controls=cfg.n_controls, seed=cfg.seed, firing_freq_L=freq, held_out=held_names,
                  subset=subset, n_bins=cfg.n_bins, size_L=size, size_bins=cfg.size_bins)
    abl = run_intervention(rm, tok, cc, "rl", feats, ablate, tasks, baseline={t: d.rl_correct for t, d in data.items()},
                           **common)
    def steer_at(ids, coef):  # each (control) set in units of its own typical activations
        return steer(ids, coef, typical_activation(cc, xe, ids, model="rl").nan_to_num(0.0), decoder="rl")

    st = run_intervention(bm, tok, cc, "base", feats, lambda ids: steer_at(ids, cfg.steer_coef), tasks,
                          baseline={t: d.base_correct for t, d in data.items()}, **common)
    abl.save(out / "ablate_rl.json")
    st.save(out / "steer_base.json")

    # 5. steering sweep
    sweep = coefficient_sweep(bm, tok, cc, "base", feats, steer_at, [float(c) for c in _split(cfg.sweep_coefs)],
                              tasks, n_controls=cfg.sweep_controls, seed=cfg.seed, firing_freq_L=freq,
                              n_bins=cfg.n_bins, size_L=size, size_bins=cfg.size_bins, held_out=held_names,
                              subset=subset, progress=cfg.progress,
                              baseline={t: d.base_correct for t, d in data.items()})
    sweep.save(out / "steer_sweep.json")
    sweep.plot(out / "figures" / "steer_sweep.png", "base + RL-success features (RL decoder), accuracy vs coefficient")

    lines = ["# Feature interventions (reproduction of arXiv 2604.25011, section on causal tests)", "",
             f"Models: base `{specs[0].path}`, RL `{specs[1].path}`; hook `{hook}`; crosscoder {cfg.variant}, "
             f"{cfg.n_latents} latents, {int((freq > 0).sum())} alive on eval activations.", "",
             *hook_choice_markdown(hook_choice),
             f"RL-success features ({rule}): **{len(feats)}** — {feats}.",
             f"Selection tasks and their base-fail/RL-success samples: {succ.n_samples}; skipped: {succ.skipped}.",
             "", f"{cfg.n_prompts} prompts per task; {cfg.n_controls} matched random controls per edit; "
             "delta with a paired bootstrap 95% CI; control p = empirical two-sided p among the controls. "
             "The subset (base fails, RL succeeds) is selected on the models' own correctness, so it regresses "
             "under any edit: read its change against the controls' subset changes (its control p).", ""]
    head = ("| task | acc before | acc after | delta [95% CI] (pts) | McNemar p | control p | "
            "base-fail/RL-success subset | published |\n|---|---|---|---|---|---|---|---|")
    for title, res, pub in (("Ablate the features in the RL model", abl, PUBLISHED["ablate_rl"]),
                            (f"Steer the base along them (coef {cfg.steer_coef})", st, PUBLISHED["steer_base"])):
        lines += [f"## {title}", "", head]
        for t in res.tasks.values():
            lines.append(fmt_row(t.task + (" (held out)" if t.held_out else ""), t, pub))
        s = res.summary()
        lines += ["", "Mean delta: " + ", ".join(f"{g} {100 * v['mean_delta']:+.1f} pts" for g, v in s.items()), ""]
    lines += ["## Steering sweep", "", "| coef | " + " | ".join(sweep.tasks) + " |",
              "|---|" + "---|" * len(sweep.tasks)]
    for c, r in zip(sweep.coefs, sweep.results):
        lines.append(f"| {c:g} | " + " | ".join(f"{100 * r.tasks[k].delta:+.1f}"
                                              + (" (NaN)" if r.tasks[k].nonfinite_frac else "")
                                              for k in sweep.tasks) + " |")
    lines += ["", "Figure: `figures/steer_sweep.png`.", "", f"Total time: {time.time() - t0:.0f} s "
              f"(crosscoder and activations {t_cc:.0f} s)."]
    report = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", report)
    results = {"config": cfg.to_dict(), **provenance(), "hook": hook,
               **({"hook_choice": hook_choice} if hook_choice else {}), "features": feats, "rule": rule,
               "success": {k: v for k, v in succ.summary().items() if k != "gradient"},
               "ablate_rl": abl.summary(), "steer_base": st.summary(), "sweep": sweep.rows(),
               "seconds": round(time.time() - t0, 1)}
    atomic_write_json(out / "results.json", results)
    print(report)
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, "reproduce_feature_interventions.py", sys.argv[1:]))
