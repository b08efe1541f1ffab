"""`python -m featalign.analyze`: analyse the shared feature space of base / RL / SFT models.

With no arguments: open (or build) the default organisms, cache every model's activations at the
middle residual layer (base, 5 RL and 5 SFT checkpoints) into an activation store (OUT/activations),
train the crosscoders the analysis needs (base/RL/SFT trio, base-vs-RL and base-vs-SFT pairs, two
base-vs-base controls, one joint crosscoder per checkpoint series), and write a report directory:
report.json, report.md, PNG figures and HTML feature cards (index.html, one page per latent in cards/). Everything
trained is
cached in --out, so a rerun only redoes the analysis; a rerun with other settings retrains exactly the
crosscoders (and recaches the activations) those settings change, and says so.

Any model set works the same way: `--model base=DIR --model rl=DIR --model sft=DIR --series rl=D1,D2,...`
(hub ids with @revision) or `--model-set FILE`, with `--tasks FILE.jsonl` for the text and the success
stage's tasks. `--stages` runs any subset of the stages (featalign.analysis.stages.STAGES); the stages
a requested one needs are added.

It answers, with intervals and next to base-vs-base nulls: are there more SFT-specific latents
than RL-specific ones; do SFT features stabilise earlier than RL's; is there a compact RL-success
feature set shared across out-of-domain tasks.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from featalign.analysis.config import DEFAULT_STAGES, HELP, AnalyzeConfig, check_shared_settings
from featalign.analysis.inputs import (
    AnalysisModels,
    load_task_set,
    mixture_activations,
    mixture_domains,
    open_organisms,
    resolve_models,
    store_activations,
    text_sources,
)
from featalign.analysis.layers import AUTO, hook_choice_markdown, resolve_hook
from featalign.analysis.pipeline import AnalysisContext, run_stages
from featalign.analysis.stages import CP_MARK, STAGES, drift_study, format_interval, markdown_sections, resolve_stages
from featalign.analysis.training import TRAINED_ON_FILE, train_or_load
from featalign.cli import UsageError, check_exists, check_out_dir, run_cli
from featalign.config import config_from_args, config_parser
from featalign.io import jsonable

__all__ = [
    "AnalyzeConfig",
    "CP_MARK",
    "DEFAULT_STAGES",
    "HELP",
    "STAGES",
    "TRAINED_ON_FILE",
    "build_parser",
    "check_shared_settings",
    "drift_study",
    "format_interval",
    "jsonable",
    "main",
    "markdown",
    "mixture_activations",
    "open_organisms",
    "resolve_config",
    "run",
    "store_activations",
    "train_or_load",
]


def build_parser() -> argparse.ArgumentParser:
    """The flags of analyze: every `AnalyzeConfig` field, `--config FILE`, repeatable `--model`/`--series`."""
    return config_parser(AnalyzeConfig, HELP, "python -m featalign.analyze", __doc__, repeated=("model", "series"))


def resolve_config(argv: Sequence[str] | None) -> AnalyzeConfig:
    """Flags over `--config` over defaults; every value checked (AnalyzeConfig), the stage names and every path too."""
    args = build_parser().parse_args(argv)
    if args.config:
        check_exists(args.config, "--config")
    cfg = config_from_args(AnalyzeConfig, args)
    resolve_stages(cfg.stage_names)
    check_out_dir(cfg.out)
    if cfg.crosscoder:
        check_exists(Path(cfg.crosscoder) / "cfg.json", "--crosscoder", "file (a trained crosscoder folder's cfg.json)")
    if cfg.organisms_dir and Path(cfg.organisms_dir).exists():
        check_exists(cfg.organisms_dir, "--organisms-dir", "folder")
    if cfg.model_set:
        check_exists(cfg.model_set, "--model-set")
    if cfg.tasks:
        check_exists(cfg.tasks, "--tasks")
    return cfg


def load_given_crosscoder(cfg: AnalyzeConfig, models: AnalysisModels):
    """The `--crosscoder` to analyse instead of a trained trio, checked against the hook and the models."""
    from featalign.crosscoder import Crosscoder

    if not cfg.crosscoder:
        return None
    given = Crosscoder.load(cfg.crosscoder).eval()
    if len(given.cfg.hooks) != 1:
        raise UsageError(
            f"--crosscoder {cfg.crosscoder} was trained on {len(given.cfg.hooks)} hooks "
            f"{given.cfg.hooks}; "
            "analyze reads one hook: pass a single-hook crosscoder"
        )
    if cfg.hook and cfg.hook != AUTO and cfg.hook != given.cfg.hooks[0]:  # auto: the crosscoder's own hook
        raise UsageError(
            f"--crosscoder {cfg.crosscoder} was trained on hook {given.cfg.hooks[0]!r}, not --hook "
            f"{cfg.hook!r}: drop --hook (the crosscoder's own hook is used) or pass a crosscoder "
            "trained there"
        )
    if given.cfg.models != models.trio_names[: given.cfg.n_models] or given.cfg.n_models < 2:
        raise UsageError(
            f"--crosscoder {cfg.crosscoder} was trained on models {given.cfg.models}; analyze needs "
            f"{models.trio_names} or ('base', 'rl'), in that order"
        )
    from transformers import AutoConfig

    base = models.trio["base"]
    width = AutoConfig.from_pretrained(base.path, revision=base.revision).hidden_size
    if given.cfg.d_model != width:
        raise UsageError(
            f"--crosscoder {cfg.crosscoder} has d_model {given.cfg.d_model} but the models' width is "
            f"{width}: its activations do not match the crosscoder; pass one trained on these models"
        )
    return given


def analysis_context(cfg: AnalyzeConfig) -> AnalysisContext:
    """Everything checked and resolved before any activation is cached: models, crosscoder, hook, text, stages."""
    models = resolve_models(cfg)
    given = load_given_crosscoder(cfg, models)
    if given is not None:
        models.trio = {n: models.trio[n] for n in given.cfg.models}
    task_set = load_task_set(cfg.tasks)
    sources = text_sources(cfg, task_set, mixture_domains(models.organisms))
    stages, hook_choice = resolve_stages(cfg.stage_names), None
    if given is not None:
        hook = given.cfg.hooks[0]
    else:
        hook, hook_choice = resolve_hook(cfg, models, sources[0])
    return AnalysisContext(cfg, models, hook, sources, task_set, stages, given, hook_choice=hook_choice)


def report_header(ctx: AnalysisContext) -> dict:
    """The report's first sections: settings, provenance, models, hook and the stages run."""
    from featalign.io import provenance

    report = {
        "config": ctx.cfg.to_dict(),
        **provenance(),
        "models": ctx.models.describe(),
        "hook": ctx.hook,
        "stages": ctx.stage_names,
        "tasks": ctx.cfg.tasks or "the organisms' domains",
    }
    org = ctx.models.organisms
    if org is not None:
        report["organisms"] = {
            "root": str(org.root),
            "preset": org.config.preset,
            "post_train_domain": org.config.post_train_domains[0],
        }
    if ctx.hook_choice is not None:
        report["hook_choice"] = ctx.hook_choice
    if ctx.given is not None:
        report["crosscoder"] = {
            "dir": str(ctx.cfg.crosscoder),
            **{k: v for k, v in ctx.given.cfg.to_dict().items() if k in ("variant", "n_latents", "k", "hooks")},
        }
    return report


def run(cfg: AnalyzeConfig) -> dict:
    """Run the requested stages (and those they need) and write report.json / report.md / figures into `cfg.out`."""
    from featalign.io import atomic_write_json, atomic_write_text

    torch.set_num_threads(cfg.threads)
    start = time.time()
    ctx = analysis_context(cfg)
    report = report_header(ctx)
    ctx.figures.mkdir(parents=True, exist_ok=True)
    if ctx.given is not None:
        from featalign.analysis.attribution import check_activations

        check_activations(ctx.given, ctx.eval.x_NMHD, names=ctx.given.cfg.models)
    timings: dict[str, float] = {}
    run_stages(STAGES, ctx, report, timings)
    report["figures"] = sorted(p.name for p in ctx.figures.glob("*.png"))
    report["timings_s"] = {**timings, "total": round(time.time() - start, 1)}
    atomic_write_json(ctx.out / "report.json", jsonable(report))
    atomic_write_text(ctx.out / "report.md", markdown(report))
    return report


def markdown(r: dict) -> str:
    """The report's Markdown summary (numbers straight from report.json): a header, then each stage's section."""
    conf = r["config"]
    trained = (
        f"{conf['variant']}, {conf['n_latents']} latents, {conf['steps']} steps, lr {conf['lr']:g}, "
        f"batch {conf['batch_size']}, trained on {conf['n_tokens']} tokens per model"
    )
    crosscoders = trained
    if "crosscoder" in r:
        given = r["crosscoder"]
        crosscoders = (
            f"trio loaded from `{given['dir']}` ({given['variant']}, {given['n_latents']} latents); the "
            f"others trained here: {trained}"
        )
    if "organisms" in r:
        org = r["organisms"]
        models = f"Organisms: `{org['root']}` (preset {org['preset']}, post-trained on '{org['post_train_domain']}')"
    else:
        models = "Models: " + ", ".join(f"{n} `{p}`" for n, p in r.get("models", {}).get("trio", {}).items())
    lines = [
        "# featalign analysis report",
        "",
        f"{models}, hook `{r.get('hook', conf.get('hook'))}`. Crosscoders: {crosscoders}; "
        f"{conf['eval_tokens']} held-out tokens for attribution. Intervals: 95% percentile bootstrap (resampling "
        f"latents / samples / features) unless marked {CP_MARK} (exact Clopper-Pearson, for a count of 0 or of "
        "all latents).",
        "",
    ]
    lines += hook_choice_markdown(r.get("hook_choice"))
    lines += markdown_sections(r)
    lines += [
        "",
        "Figures: " + ", ".join(f"`figures/{p}`" for p in r.get("figures", [])),
        "",
        f"Timings (s): {r['timings_s']}",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the analysis into `--out` and print its report; raises rather than exits, for `run_cli`."""
    cfg = resolve_config(argv)
    report = run(cfg)
    print(markdown(report))
    print(f"report written to {cfg.out}/ (report.json, report.md, figures/, index.html)")
    return report


def cli(prog: str = "featalign-analyze") -> None:
    """Console script `featalign-analyze`; also `python -m featalign.analysis` and `python -m featalign.analyze`."""
    sys.exit(run_cli(main, prog, sys.argv[1:]))
