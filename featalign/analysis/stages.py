"""The analysis stages and their registry, `STAGES` (report order = the order they are defined here).

Each stage is a function `run(ctx) -> sections` decorated with `@stage(name, markdown, requires, uses)`:
it reads what it needs from the `AnalysisContext` (activations, the trio crosscoder, an earlier stage's
result in `ctx.results`), writes its figures into `ctx.figures`, and returns its JSON-able report.json
sections; `markdown(report)` renders its part of report.md from those sections alone. A new metric is one
new stage here plus its test; `python -m featalign.analyze --stages NAME` then runs it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from featalign.analysis.controls import (
    control_activations,
    count_interval,
    difference_interval,
    independent_difference_interval,
    specific_masks,
)
from featalign.analysis.pipeline import AnalysisContext, Sections, Stage, as_numpy
from featalign.cli import UsageError
from featalign.io import atomic_write_json, jsonable, provenance

STAGES: dict[str, Stage] = {}
CP_MARK = "†"  # marks an exact Clopper-Pearson interval (a count of 0 or n has no bootstrap variation)
TRIO_CLASSES = ("rl-only", "sft-only", "base-only")


def stage(
    name: str, markdown: Callable[[dict], list[str]], requires: tuple[str, ...] = (), uses: tuple[str, ...] = ()
) -> Callable:
    """Register the decorated `run(ctx) -> sections` function as stage `name`."""

    def register(run: Callable[[AnalysisContext], Sections]) -> Callable:
        STAGES[name] = Stage(name, run, markdown, requires, uses)
        return run

    return register


def resolve_stages(names: list[str]) -> list[str]:
    """`names` plus every stage they require, in registry order; an unknown name is a UsageError."""
    bad = sorted(set(names) - set(STAGES))
    if bad:
        raise UsageError(f"unknown stage(s) {bad} in --stages; choose from {','.join(STAGES)}")
    wanted: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending += STAGES[name].requires
    return [n for n in STAGES if n in wanted]


def markdown_sections(report: dict) -> list[str]:
    """Every stage's report.md section, in registry order (a stage that did not run adds nothing)."""
    return [line for s in STAGES.values() for line in s.markdown(report)]


def format_interval(d: dict) -> str:
    """'count [low, high]', marked when the interval is exact Clopper-Pearson."""
    mark = CP_MARK if d.get("method") == "clopper-pearson" else ""
    return f"{d['count']} [{d['low']:.0f}, {d['high']:.0f}]{mark}"


def format_difference(d: dict) -> str:
    """'+difference [+low, +high]' of a signed count difference (`difference_interval`'s result)."""
    return f"{d['difference']:+.0f} [{d['low']:+.0f}, {d['high']:+.0f}]"


# --- attribution: the trio crosscoder's model-specific latents --------------------------------------------


def trio_counts(att, alive_L: torch.Tensor) -> dict:
    """Q1 on the trio: counts of each model-only class among alive latents, before and after Latent Scaling."""
    alive = alive_L.numpy()
    masks = {c: np.array([k == c for k in att.classes]) for c in TRIO_CLASSES}
    masks_ls = {c: np.array([k == c for k in att.classes_ls]) for c in ("rl-only", "sft-only")}
    return {
        "n_alive": int(alive.sum()),
        "trio": {c: count_interval(m[alive]).as_dict() for c, m in masks.items()},
        "trio_after_latent_scaling": {c: count_interval(m[alive]).as_dict() for c, m in masks_ls.items()},
        "trio_sft_minus_rl": difference_interval(masks["sft-only"][alive], masks["rl-only"][alive]),
        "trio_sft_minus_rl_after_ls": difference_interval(masks_ls["sft-only"][alive], masks_ls["rl-only"][alive]),
    }


def attribution_figures(att, alive_L: torch.Tensor, models: tuple[str, ...], figures, acfg) -> None:
    """Decoder-norm share histograms, the ternary plot (3 models) and Latent Scaling of model-specific latents."""
    from featalign.analysis import plots

    alive = alive_L.numpy()
    plots.mas_histograms(as_numpy(att.mas_LM[alive_L]), models, figures / "mas_hist.png", "trio: decoder-norm shares")
    if len(models) == 3:
        class_colour = {"shared": "C0", "rl-only": "C3", "sft-only": "C2", "base-only": "C1"}
        plots.ternary(
            as_numpy(att.mas_LM[alive_L]),
            models,
            figures / "ternary.png",
            [class_colour.get(c, "grey") for c, a in zip(att.classes, alive) if a],
            "model attribution (alive latents)",
        )
    specific = np.array([c.endswith("-only") for c in att.classes]) & alive
    if not specific.any():
        return
    share_of_max_LM = as_numpy(att.norms_LM / att.norms_LM.max(-1, keepdim=True).values)

    def nu_where_absent(nu_LM) -> np.ndarray:  # a latent's nu in the models that do not carry it
        return np.nanmax(np.where(share_of_max_LM < acfg.absent_ratio, as_numpy(nu_LM), np.nan), axis=1)

    with np.errstate(all="ignore"):
        plots.latent_scaling_scatter(
            nu_where_absent(att.ls.nu_error_LM)[specific],
            nu_where_absent(att.ls.nu_recon_LM)[specific],
            [c for c, s in zip(att.classes, specific) if s],
            figures / "latent_scaling.png",
            (acfg.ls_error_threshold, acfg.ls_recon_threshold),
            "model-specific latents",
        )


def attribution_markdown(r: dict) -> list[str]:
    """The attribution stage's section of report.md, from its report.json sections."""
    q1 = r.get("q1_specific_latents", {})
    if "trio" not in q1:
        return []
    lines = [
        "## Q1. Are there more SFT-specific latents than RL-specific ones?",
        "",
        f"Trio crosscoder ({', '.join(r.get('models', {}).get('trio', ['base', 'rl', 'sft']))}), "
        f"{q1.get('n_alive')} alive latents:",
        "",
        "| class | count [95% CI] | after Latent Scaling |",
        "|---|---|---|",
    ]
    for c in TRIO_CLASSES:
        after = q1.get("trio_after_latent_scaling", {}).get(c)
        lines.append(f"| {c} | {format_interval(q1['trio'][c])} | {format_interval(after) if after else '-'} |")
    d, d_ls = q1.get("trio_sft_minus_rl", {}), q1.get("trio_sft_minus_rl_after_ls", {})
    if d:
        lines += [
            "",
            f"SFT-only minus RL-only: {format_difference(d)} (share of resamples <= 0: {d['p_le_0']:.3f}); "
            f"after Latent Scaling: {format_difference(d_ls)}.",
        ]
    return lines


@stage("attribution", attribution_markdown, uses=("eval", "trio"))
def attribution_stage(ctx: AnalysisContext) -> Sections:
    """Classify the trio crosscoder's latents by decoder-norm share (and Latent Scaling) on held-out text."""
    from featalign.analysis.attribution import AttributionConfig, attribute

    trio = ctx.trio
    att = attribute(trio, ctx.eval.columns(*trio.cfg.models))
    alive_L = att.enc["firing_rate"] > 0
    ctx.results["attribution"] = att
    attribution_figures(att, alive_L, trio.cfg.models, ctx.figures, AttributionConfig())
    return {"attribution": att.summary(), "q1_specific_latents": trio_counts(att, alive_L)}


# --- controls: pairwise base-vs-tuned crosscoders next to base-vs-base nulls ------------------------------


def pair_counts(masks: dict, nrn_L: torch.Tensor) -> dict:
    """Counts (with intervals) of one pairwise crosscoder's NRN classes among its alive latents."""
    alive = as_numpy(masks["alive"])
    counted = {
        "tuned_only": "t_only",
        "base_only": "o_only",
        "shared": "shared",
        "tuned_lean": "t_lean",
        "base_lean": "o_lean",
    }
    return {
        "n_alive": int(alive.sum()),
        **{key: count_interval(as_numpy(masks[m])[alive]).as_dict() for key, m in counted.items()},
        "nrn_sd": float(as_numpy(nrn_L)[alive].std()),
    }


def pairwise_crosscoders(ctx: AnalysisContext) -> tuple[dict, dict]:
    """({name: NRN per latent}, {name: specific masks}) of base-vs-tuned and the two base-vs-base controls."""
    from featalign.analysis.attribution import attribute

    cfg, nrns, masks = ctx.cfg, {}, {}
    for tuned in [m for m in ("rl", "sft") if m in ctx.models.trio]:
        name = f"base-vs-{tuned}"
        cc = ctx.crosscoder(name, ("base", tuned), ctx.train.columns("base", tuned))
        a = attribute(cc, ctx.eval.columns("base", tuned))
        nrns[name] = a.nrn[f"base|{tuned}"]
        masks[name] = specific_masks(nrns[name], a.enc["firing_rate"] > 0, lean=cfg.lean)
    base_train, base_eval = ctx.train.columns("base"), ctx.eval.columns("base")
    for kind in ("same", "disjoint"):
        name = f"control-{kind}"
        cc = ctx.crosscoder(name, ("base", "base2"), control_activations(base_train, kind, cfg.seed))
        a = attribute(cc, control_activations(base_eval, kind, cfg.seed + 1))
        nrns[name] = a.nrn["base|base2"]
        masks[name] = specific_masks(nrns[name], a.enc["firing_rate"] > 0, lean=cfg.lean)
    return nrns, masks


def controls_markdown(r: dict) -> list[str]:
    """The controls stage's section of report.md, from its report.json sections."""
    q1 = r.get("q1_specific_latents", {})
    if "pairwise" not in q1:
        return []
    lines = [] if "trio" in q1 else ["## Q1. Are there more SFT-specific latents than RL-specific ones?", ""]
    lines += [
        "",
        "Pairwise crosscoders (NRN >= 0.9 tuned-only, <= 0.1 base-only) next to the base-vs-base nulls:",
        "",
        "| crosscoder | alive | tuned-only | base-only | shared (0.4-0.6) | "
        f"tuned-leaning (>= {r['config']['lean']}) | base-leaning | sd(NRN) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, v in q1["pairwise"].items():
        classes = ("tuned_only", "base_only", "shared", "tuned_lean", "base_lean")
        cells = " | ".join(format_interval(v[c]) for c in classes)
        lines.append(f"| {k} | {v['n_alive']} | {cells} | {v['nrn_sd']:.3f} |")
    if "pairwise_sft_minus_rl_tuned_only" in q1:
        only, lean = q1["pairwise_sft_minus_rl_tuned_only"], q1["pairwise_sft_minus_rl_tuned_lean"]
        lines += [
            "",
            f"SFT minus RL (pairwise), tuned-only: {format_difference(only)}; "
            f"tuned-leaning: {format_difference(lean)}.",
        ]
    return lines


@stage("controls", controls_markdown, uses=("train", "eval"))
def controls_stage(ctx: AnalysisContext) -> Sections:
    """Pairwise base-vs-rl / base-vs-sft NRN counts next to base-vs-base controls (same text, disjoint text)."""
    from featalign.analysis import plots

    nrns, masks = pairwise_crosscoders(ctx)
    q1: dict = {"pairwise": {name: pair_counts(m, nrns[name]) for name, m in masks.items()}}
    if "base-vs-sft" in masks:
        sft, rl = masks["base-vs-sft"], masks["base-vs-rl"]
        alive_sft, alive_rl = as_numpy(sft["alive"]), as_numpy(rl["alive"])
        for key, m in (("tuned_only", "t_only"), ("tuned_lean", "t_lean")):
            q1[f"pairwise_sft_minus_rl_{key}"] = independent_difference_interval(
                as_numpy(sft[m])[alive_sft], as_numpy(rl[m])[alive_rl]
            )
    plots.nrn_histograms(
        {k: as_numpy(v[masks[k]["alive"]]) for k, v in nrns.items()},
        ctx.figures / "nrn_hist.png",
        "NRN of alive latents: base-vs-tuned next to base-vs-base controls",
    )
    rows = [
        (f"{k}: tuned-only", *(v["tuned_only"][f] for f in ("count", "low", "high", "n", "method")))
        for k, v in q1["pairwise"].items()
    ]
    plots.count_bars(
        rows, ctx.figures / "specific_counts.png", title="tuned-only latents (NRN >= 0.9) among the alive ones"
    )
    return {"q1_specific_latents": q1}


# --- drift: feature drift over checkpoint series -----------------------------------------------------------


def drift_study(series: dict, columns, hook: str, cfg, crosscoder_dir) -> tuple[dict, dict]:
    """Feature drift over each checkpoint series ({"sft": CheckpointSeries, "rl": ...}) with joint and/or
    pairwise crosscoders trained on `columns(*names)` ([N, M, 1, D] activations of those models), plus the
    SFT-vs-RL stabilisation comparisons: ({result name: DriftResult}, summary dict).

    With `cfg.drift_nulls` each result's summary also holds its nulls, computed by this same code:
    `null_shuffled` (the series' checkpoints in permuted orders, `shuffled_order_null`) and, for joint
    results, `null_copies` (every checkpoint replaced by the base itself, `drift_copies_null`)."""
    from featalign.analysis.drift import DriftConfig, compare_stabilisation

    drift_cfg, results, orders = DriftConfig(top_k=cfg.top_k), {}, {}
    for kind, s in series.items():
        for key, (result, drift_in_order) in drift_series(
            kind, s, columns, hook, cfg, crosscoder_dir, drift_cfg
        ).items():
            results[key], orders[key] = result, drift_in_order
    summary = {k: v.summary() for k, v in results.items()}
    if getattr(cfg, "drift_nulls", False):
        copies: dict[int, dict] = {}
        for key, result in results.items():
            summary[key]["null_shuffled"] = drift_shuffled_null(orders[key], len(result.indices), cfg)
            if result.mode == "joint":
                s = series[result.series]
                if len(s.checkpoints) not in copies:
                    copies[len(s.checkpoints)] = drift_copies_null(s, columns, hook, cfg, crosscoder_dir, drift_cfg)
                summary[key]["null_copies"] = copies[len(s.checkpoints)]
    if "sft" in results and "rl" in results:
        summary["sft_vs_rl"] = compare_stabilisation(results["sft"], results["rl"])
        summary["sft_vs_rl_topk_entry"] = compare_stabilisation(results["sft"], results["rl"], what="topk_entry")
    return results, summary


def drift_series(kind: str, s, columns, hook: str, cfg, crosscoder_dir, drift_cfg, modes=None) -> dict:
    """{result name: (DriftResult, drift(order))} of one series in the modes `cfg.drift_mode` asks for (or
    `modes`); `drift(order)` reruns the analysis on the same crosscoders with the checkpoints in `order`
    (0-based positions), which the shuffled-order null calls."""
    from featalign.analysis.attribution import decoder_vectors, latent_activations
    from featalign.analysis.drift import DriftResult, drift_joint, drift_pairwise
    from featalign.analysis.training import train_or_load

    def fired(cc, x_NMHD) -> torch.Tensor:
        return (latent_activations(cc, x_NMHD[: cfg.eval_tokens]) > 0).any(0)

    modes = modes or {"joint": ("joint",), "pairwise": ("pairwise",), "both": ("joint", "pairwise")}[cfg.drift_mode]
    steps = [c.step for c in s.checkpoints]
    out: dict = {}
    if "joint" in modes:
        cc = train_or_load(crosscoder_dir / f"drift-{kind}-joint", tuple(s.names), columns(*s.names), hook, cfg)
        dec_LMK, alive_L = decoder_vectors(cc), fired(cc, columns(*s.names))

        def joint(order) -> DriftResult:
            return drift_joint(
                dec_LMK[:, [0, *(o + 1 for o in order)]], drift_cfg, alive_L, kind, [steps[o] for o in order]
            )

        out[kind] = (joint(range(len(steps))), joint)
    if "pairwise" in modes:
        decoders, alive = [], []
        for name in s.names[1:]:
            x_NMHD = columns("base", name)
            cc = train_or_load(
                crosscoder_dir / f"drift-{kind}-pair-{name.split('@')[1]}", ("base", name), x_NMHD, hook, cfg
            )
            decoders.append(decoder_vectors(cc))
            alive.append(fired(cc, x_NMHD))

        def pairwise(order) -> DriftResult:
            return drift_pairwise(
                [decoders[o] for o in order], drift_cfg, [alive[o] for o in order], kind, [steps[o] for o in order]
            )

        out[kind if modes == ("pairwise",) else f"{kind}-pairwise"] = (pairwise(range(len(steps))), pairwise)
    return out


def drift_shuffled_null(drift_in_order, n_checkpoints: int, cfg) -> dict:
    """The shuffled-order null of one drift result: mean successive top-k overlap over checkpoint orders (exact
    over every order when n! <= `cfg.drift_permutations`), the real order's p; no p for fewer than 3 checkpoints
    (every order of 2 has the same one overlap)."""
    from featalign.analysis.drift import shuffled_order_null

    if n_checkpoints < 3:
        return {"skipped": f"{n_checkpoints} checkpoints: every order has the same successive pairs"}
    return shuffled_order_null(drift_in_order, n_checkpoints, "mean_overlap", cfg.drift_permutations, cfg.seed)


def drift_copies_null(s, columns, hook: str, cfg, crosscoder_dir, drift_cfg) -> dict:
    """The identical-copies null of a series: the same joint drift analysis on [base, base, ..., base] (as many
    copies as the series has checkpoints, all read from the base's activations), where no feature can belong to
    a checkpoint: its successive overlaps (the overlap of rankings by noise alone) with intervals, and its
    specific features (NRN >= 0.9) at the last copy with an interval (should be 0)."""
    from featalign.analysis.drift import Checkpoint, CheckpointSeries

    T = len(s.checkpoints)
    name = f"copies{T}"
    copies = CheckpointSeries(name, s.base, [Checkpoint(k, None, s.base) for k in range(1, T + 1)]).validate()

    def base_columns(*names: str):
        return columns(*("base" if n.startswith(f"{name}@") else n for n in names))

    ((result, _),) = drift_series(name, copies, base_columns, hook, cfg, crosscoder_dir, drift_cfg, ("joint",)).values()
    full = result.summary()
    keys = ("overlap", "overlap_95", "mean_overlap", "n_specific", "n_specific_last", "topk_entry_median")
    return {"crosscoder": f"drift-{name}-joint", **{k: full[k] for k in keys}}


NO_SERIES = (
    "not run: the model set has no checkpoint series; pass --series rl=DIR1,DIR2,... (and/or sft=...), "
    "or a model-set file with a 'series' entry, to measure drift"
)


def drift_markdown(r: dict) -> list[str]:
    """The drift stage's section of report.md, from its report.json sections."""
    if "q2_drift" not in r:
        return []
    q2 = r["q2_drift"]
    lines = ["", "## Q2. Do SFT features stabilise earlier than RL's?", ""]
    if "skipped" in q2:
        return lines + [f"Drift {q2['skipped']}."]
    lines += [
        "| series | mode | top-k overlap between successive checkpoints | mean | stabilisation checkpoint "
        "(median [95% CI]) | top-k entry checkpoint (median [95% CI]) | new specific per checkpoint |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, v in q2.items():
        if k.startswith("sft_vs_rl"):
            continue
        stab, entry = v["stabilisation_median_95"], v["topk_entry_median_95"]
        lines.append(
            f"| {k} | {v['mode']} | {', '.join(f'{o:.2f}' for o in v['overlap'])} | {v['mean_overlap']:.2f} | "
            f"{v['stabilisation_median']:.1f} [{stab[0]:.1f}, {stab[1]:.1f}] | {v['topk_entry_median']:.1f} "
            f"[{entry[0]:.1f}, {entry[1]:.1f}] | {v['new_features']} |"
        )
    lines += drift_nulls_markdown(q2)
    for key, label in (("sft_vs_rl", "stabilisation"), ("sft_vs_rl_topk_entry", "top-k entry")):
        if key in q2:
            c = q2[key]
            low, high = c["median_diff_95"]
            lines += [
                "",
                f"Median {label} SFT - RL: {c['median_diff']:+.1f} checkpoints [{low:+.1f}, {high:+.1f}]; "
                f"one-sided Mann-Whitney p (SFT earlier) = {c['mannwhitney_p_a_earlier']:.3g}.",
            ]
    return lines


def drift_nulls_markdown(q2: dict) -> list[str]:
    """The drift nulls' table (one row per drift result that has them), from report.json's q2_drift."""
    rows = [(k, v) for k, v in q2.items() if isinstance(v, dict) and "null_shuffled" in v]
    if not rows:
        return []

    def pairs(v: dict) -> str:
        return ", ".join(f"{o:.2f} [{lo:.2f}, {hi:.2f}]" for o, (lo, hi) in zip(v["overlap"], v["overlap_95"]))

    lines = [
        "",
        "Nulls, by the same analysis: *identical copies* (the base in place of every checkpoint: nothing can "
        "become specific, and the overlap is what rankings by training noise give) and *shuffled order* (the "
        "checkpoints in every order, or seeded random orders: is the real order's mean successive overlap "
        "higher than a random order's? p = share of orders with a mean overlap >= the real one's).",
        "",
        "| series | overlap per pair [95% CI] | identical copies: overlap per pair (mean) | specific at the last "
        "checkpoint: real / copies [95% CI] | shuffled order: mean overlap, null mean [95%] | p (orders) |",
        "|---|---|---|---|---|---|",
    ]
    for k, v in rows:
        copies = v.get("null_copies")
        real = format_interval(v["n_specific_last"]) if v.get("n_specific_last") else str(v["n_specific"][-1])
        copies_cells = "-", f"{real} / -"
        if copies:
            null = format_interval(copies["n_specific_last"]) if copies.get("n_specific_last") else "-"
            copies_cells = (f"{pairs(copies)} ({copies['mean_overlap']:.2f})", f"{real} / {null}")
        sh = v["null_shuffled"]
        if "skipped" in sh:
            shuffled = "-", sh["skipped"]
        else:
            lo, hi = sh["null_95"]
            shuffled = (
                f"{sh['observed']:.2f}, {sh['null_mean']:.2f} [{lo:.2f}, {hi:.2f}]",
                f"{sh['p']:.3g} ({sh['n_permutations']}{', exact' if sh['exact'] else ' random'})",
            )
        lines.append(f"| {k} | {pairs(v)} | {' | '.join(copies_cells)} | {' | '.join(shuffled)} |")
    return lines


@stage("drift", drift_markdown)
def drift_stage(ctx: AnalysisContext) -> Sections:
    """Drift of model-specific features over each checkpoint series of the model set (skipped without one)."""
    from featalign.analysis import plots

    if not ctx.models.series:
        return {"q2_drift": {"skipped": NO_SERIES}}
    results, summary = drift_study(
        ctx.models.checkpoint_series(), ctx.train.columns, ctx.hook, ctx.cfg, ctx.out / "crosscoders"
    )
    plots.drift_side_by_side(results, ctx.figures / "drift.png")
    if ctx.cfg.drift_nulls:
        plots.drift_nulls(summary, ctx.figures / "drift_nulls.png")
    return {"q2_drift": summary}


# --- success: RL-success features shared across out-of-domain tasks ---------------------------------------


def success_markdown(r: dict) -> list[str]:
    """The success stage's section of report.md, from its report.json sections."""
    if "q3_success_features" not in r:
        return []
    q3 = r["q3_success_features"]
    lines = ["", "## Q3. Is there a compact RL-success feature set shared across tasks?", ""]
    if "error" in q3:
        return lines + [f"Not computed: {q3['error']}"]
    boot, null = q3.get("bootstrap", {}), q3["null"]
    lines += [
        f"Tasks: {', '.join(f'{t} ({n} samples)' for t, n in q3['n_samples'].items())}; skipped: "
        f"{q3['skipped'] or 'none'}.",
        "",
        f"Per-task sets: {q3['per_task_sizes']}. Intersection: **{q3['n_features']} latents** "
        f"(bootstrap 95% {boot.get('size_95')}); features {q3['features'][:50]}. Selected in at least half "
        f"of the tasks: {q3['n_majority']} latents (null {null['majority_size_mean']:.1f}, 95% "
        f"{null['majority_size_95']}).",
        f"Mean pairwise overlap |A∩B|/min: {q3['mean_pairwise_overlap']:.2f}.",
        f"Random-subset null ({null['n']} repeats): intersection {null['size_mean']:.1f} "
        f"(95% {null['size_95']}), mean overlap {null['mean_overlap_mean']:.2f} (95% "
        f"[{null['mean_overlap_95'][0]:.2f}, {null['mean_overlap_95'][1]:.2f}]); Jaccard of null sets with the "
        f"real set {null['jaccard_with_real_mean']:.2f}.",
    ]
    if q3.get("gradient"):
        lines += [
            "",
            "Agreement of Score_k with activation x gradient (per task): "
            + "; ".join(
                f"{t}: Spearman {g['spearman']:.2f}, top-{g['top_k']} Jaccard {g['top_k_jaccard']:.2f}"
                for t, g in q3["gradient"].items()
            ),
        ]
    return lines


@stage("success", success_markdown, uses=("trio",))
def success_stage(ctx: AnalysisContext) -> Sections:
    """Latents that separate base-fail/RL-success samples on every out-of-domain task, next to a random null."""
    from featalign.analysis import plots
    from featalign.analysis.inputs import success_tasks
    from featalign.analysis.success_features import SuccessConfig, TooFewSamplesError, success_features_for_models

    cfg = ctx.cfg
    success_cfg = SuccessConfig(
        positions=cfg.positions, frac=cfg.success_frac, min_samples=cfg.min_samples, n_null=cfg.n_null, seed=cfg.seed
    )
    tasks = success_tasks(cfg, ctx.models, ctx.task_set, progress=cfg.progress)
    dirs = ctx.models.model_dirs(("base", "rl"))
    try:
        success = success_features_for_models(
            ctx.trio,
            dirs["base"],
            dirs["rl"],
            tasks,
            success_cfg,
            gradient=cfg.gradient,
            progress=cfg.progress,
            device=cfg.device,
            dtype=cfg.model_dtype,
        )
    except TooFewSamplesError as e:
        return {"q3_success_features": {"error": str(e)}}
    ctx.results["success"] = success
    summary = success.summary()
    # the selection as an artifact the intervention CLI reads (`--features OUT/success_features.json`)
    trio_dir = cfg.crosscoder or str(ctx.out / "crosscoders" / "trio")
    atomic_write_json(
        ctx.out / "success_features.json",
        jsonable(
            {
                "features": success.features,
                "majority_features": success.majority,
                "tasks": success.tasks,
                "crosscoder": trio_dir,
                "models": dirs,
                "hook": ctx.hook,
                **provenance(),
            }
        ),
    )
    plots.success_sets(
        summary["per_task_sizes"],
        summary["n_features"],
        summary["null"].get("size_95"),
        ctx.figures / "success_sets.png",
        "RL-success features per task and their intersection",
    )
    return {"q3_success_features": summary}


# --- cards: an HTML page per chosen latent ------------------------------------------------------------------


def card_latents(att, models: tuple[str, ...], n_cards: int, success=None) -> dict[int, str]:
    """{latent: why it was chosen}: per tuned model, the alive latents with its largest decoder-norm share over
    all models (NRN(base|rl) alone ignores the SFT decoder and can rank SFT-owned latents as RL-leaning),
    then the RL-success features."""
    alive = as_numpy(att.enc["firing_rate"] > 0)
    chosen: dict[int, str] = {}
    for tuned in [m for m in ("rl", "sft") if m in models]:
        share_L = att.mas_LM[:, models.index(tuned)]
        candidates = [i for i in range(len(att.classes)) if alive[i]]
        for i in sorted(candidates, key=lambda i: -float(share_L[i]))[:n_cards]:
            chosen.setdefault(i, f"largest {tuned} decoder-norm share ({float(share_L[i]):.2f}, {att.classes[i]})")
    if success is not None:
        for i in success.features[:n_cards]:
            chosen.setdefault(i, "RL-success feature (all tasks)")
    return chosen


def cards_markdown(r: dict) -> list[str]:
    """The cards stage's section of report.md, from its report.json sections."""
    return ["", f"Feature cards: `index.html` ({r['cards']['n']} latents)."] if "cards" in r else []


@stage("cards", cards_markdown, requires=("attribution",), uses=("trio",))
def cards_stage(ctx: AnalysisContext) -> Sections:
    """Feature cards (top activating text per model) for the most model-specific and the RL-success latents."""
    from featalign.analysis.cards import card_examples, write_cards

    att, trio = ctx.results["attribution"], ctx.trio
    chosen = card_latents(att, trio.cfg.models, ctx.cfg.n_cards, ctx.results.get("success"))
    examples = card_examples(
        trio,
        ctx.models.model_dirs(trio.cfg.models),
        list(chosen),
        progress=ctx.cfg.progress,
        device=ctx.cfg.device,
        dtype=ctx.cfg.model_dtype,
    )
    write_cards(
        ctx.out,
        list(chosen),
        examples,
        {i: att.latent(i) for i in chosen},
        chosen,
        "featalign feature cards (trio crosscoder)",
    )
    return {"cards": {"index": str(ctx.out / "index.html"), "n": len(chosen)}}
