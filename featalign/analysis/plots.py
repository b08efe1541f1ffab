"""Matplotlib figures (Agg backend) for attribution, controls, drift and success features."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featalign.plotting import pyplot, save_figure


def _plt():
    return pyplot()


def _save(fig, path) -> Path:
    return save_figure(fig, path)


def nrn_histograms(nrn_by_name: dict[str, np.ndarray], path, title: str = "") -> Path:
    """Overlaid NRN histograms (one per crosscoder / pair), e.g. base-vs-RL next to its base-vs-base nulls."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(0, 1, 41)
    for name, v in nrn_by_name.items():
        ax.hist(np.asarray(v), bins=bins, histtype="step", lw=1.5, label=f"{name} (n={len(v)})")
    ax.axvline(0.1, color="grey", ls=":")
    ax.axvline(0.9, color="grey", ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("NRN = |d_T| / (|d_O| + |d_T|)")
    ax.set_ylabel("latents")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def mas_histograms(mas_LM: np.ndarray, models, path, title: str = "") -> Path:
    """Histogram (log counts) of each model's attribution score: mass near 1 means latents that model owns, near 1/M
    shared ones."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for m, name in enumerate(models):
        ax.hist(mas_LM[:, m], bins=np.linspace(0, 1, 41), histtype="step", lw=1.5, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("model attribution score (decoder-norm share)")
    ax.set_ylabel("latents")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def ternary(mas_L3: np.ndarray, models, path, colors=None, title: str = "") -> Path:
    """Simplex plot of 3-model attribution scores: corners = a model owns the latent, centre = shared."""
    plt = _plt()
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    xy = np.asarray(mas_L3) @ corners
    fig, ax = plt.subplots(figsize=(5, 4.6))
    ax.plot(*np.vstack([corners, corners[:1]]).T, color="k", lw=0.8)
    ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.4, c=colors if colors is not None else "C0")
    for c, name, off in zip(corners, models, [(-0.06, -0.05), (0.02, -0.05), (-0.03, 0.03)]):
        ax.text(c[0] + off[0], c[1] + off[1], name, fontsize=10)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title)
    return _save(fig, path)


def latent_scaling_scatter(
    nu_err: np.ndarray, nu_rec: np.ndarray, labels: list[str], path, thresholds=(0.3, 0.5), title: str = ""
) -> Path:
    """nu_error against nu_recon with the artifact thresholds drawn, so complete-shrinkage and decoupling artifacts
    stand out."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for lab in sorted(set(labels)):
        m = np.array([x == lab for x in labels])
        ax.scatter(np.clip(nu_err[m], -0.5, 2), np.clip(nu_rec[m], -0.5, 2), s=6, alpha=0.6, label=lab)
    ax.axvline(thresholds[0], color="grey", ls=":")
    ax.axhline(thresholds[1], color="grey", ls=":")
    ax.set_xlabel("nu_error (absent model's error / owner)")
    ax.set_ylabel("nu_recon (absent model's reconstruction / owner)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)


#: how `count_bars` names each interval method of `featalign.analysis.controls.CountInterval`
INTERVAL_NAMES = {"clopper-pearson": "Clopper-Pearson (exact)", "bootstrap": "percentile bootstrap"}


def interval_note(methods: Sequence[str], confidence: float = 0.95) -> str:
    """The caption of a figure's intervals from the methods that made them, so a title cannot name a method
    its intervals did not use (`count_interval` switches to Clopper-Pearson where a count is 0 or all)."""
    used = list(dict.fromkeys(methods))
    names = [INTERVAL_NAMES.get(m, m) for m in used]
    if set(used) == {"bootstrap", "clopper-pearson"}:
        names = ["percentile bootstrap", "Clopper-Pearson (exact) where the count is 0 or all"]
    return f"{confidence:.0%} intervals: " + "; ".join(names)


def count_bars(rows: Sequence[tuple], path, ylabel: str = "model-specific latents", title: str = "") -> Path:
    """`count_bars_figure(rows, ylabel, title)` written to `path`."""
    return _save(count_bars_figure(rows, ylabel, title), path)


def count_bars_figure(rows: Sequence[tuple], ylabel: str = "model-specific latents", title: str = ""):
    """Bars with interval whiskers: rows of (label, count, low, high), optionally followed by n (what was counted
    over) and the interval's method (a `CountInterval.method`).

    Every bar gets a marker at its count and its number ("k of n" with n), so a count of 0, whose bar has no
    height, still shows as a value rather than as a bare whisker; with methods the title's second line says
    which intervals these are (`interval_note`)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(2.0 + 1.0 * len(rows), 3.8))
    x = np.arange(len(rows))
    c = np.array([r[1] for r in rows], dtype=float)
    lo, hi = np.array([r[2] for r in rows], dtype=float), np.array([r[3] for r in rows], dtype=float)
    err = np.array([c - lo, hi - c]).clip(0)
    colors = [f"C{i}" for i in range(len(rows))]
    ax.bar(x, c, color=colors, alpha=0.8)
    ax.errorbar(x, c, yerr=err, fmt="none", ecolor="black", capsize=4, lw=1)
    ax.scatter(x, c, color=colors, edgecolor="black", zorder=3, s=28, clip_on=False)
    top = max(float(hi.max(initial=0.0)), float(c.max(initial=0.0)), 1.0)
    for i, r in enumerate(rows):
        text = f"{r[1]:.0f} of {r[4]}" if len(r) > 4 else f"{r[1]:.0f}"
        ax.annotate(
            text,
            (x[i], max(hi[i], c[i])),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylim(0, top * 1.2)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_xticks(x, [r[0] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    methods = [r[5] for r in rows if len(r) > 5]
    width = int(11 * (2 + len(rows)))  # characters of a 9-point title per figure width
    lines = [textwrap.fill(title, width=width)] if title else []
    if methods:
        lines.append(textwrap.fill(interval_note(methods), width=width))
    ax.set_title("\n".join(lines), fontsize=9)
    return fig


def drift_side_by_side(results: dict, path) -> Path:
    """Per series (SFT, RL): top-k overlap between successive checkpoints, stabilisation histogram, NRN curves."""
    plt = _plt()
    names = list(results)
    fig, axes = plt.subplots(3, len(names), figsize=(4.2 * len(names), 8.4), squeeze=False)
    for j, name in enumerate(names):
        r = results[name]
        idx = r.indices
        axes[0, j].plot([f"{a}->{a + 1}" for a in idx[:-1]], r.overlap, marker="o")
        axes[0, j].set_ylim(0, 1.05)
        axes[0, j].set_title(f"{name}: top-{len(r.final_features)} overlap ({r.mode})")
        axes[0, j].set_ylabel("overlap")
        st = np.array(r.stabilisation)
        axes[1, j].bar(idx, [int((st == k).sum()) for k in idx])
        axes[1, j].set_xlabel("stabilisation checkpoint")
        axes[1, j].set_ylabel("features")
        for curve in r.curves.get("nrn", [])[:50]:
            axes[2, j].plot(idx, curve, color="C0", alpha=0.25, lw=0.8)
        axes[2, j].set_xlabel("checkpoint")
        axes[2, j].set_ylabel("NRN vs base (final top-k)")
        axes[2, j].set_ylim(0, 1.02)
    return _save(fig, path)


def drift_nulls(summary: dict, path) -> Path:
    """Per drift result with nulls: top: successive overlaps with their 95% intervals next to the identical-copies
    null's; bottom: the shuffled-order null distribution of the mean overlap with the real order marked."""
    plt = _plt()
    names = [k for k, v in summary.items() if isinstance(v, dict) and "null_shuffled" in v]
    fig, axes = plt.subplots(2, max(len(names), 1), figsize=(4.2 * max(len(names), 1), 6.4), squeeze=False)
    for j, name in enumerate(names):
        v = summary[name]
        for label, d, colour, dx in (
            ("real order", v, "C0", -0.08),
            ("identical copies", v.get("null_copies"), "C7", 0.08),
        ):
            if not d:
                continue
            x = np.arange(len(d["overlap"])) + dx
            o, ci = np.array(d["overlap"]), np.array(d["overlap_95"]).reshape(-1, 2)
            axes[0, j].errorbar(
                x, o, yerr=np.array([o - ci[:, 0], ci[:, 1] - o]).clip(0), fmt="o", color=colour, capsize=3, label=label
            )
        axes[0, j].set_xticks(range(len(v["overlap"])), [f"{a}->{a + 1}" for a in range(1, len(v["overlap"]) + 1)])
        axes[0, j].set_ylim(-0.02, 1.05)
        axes[0, j].set_ylabel("top-k overlap (95% CI)")
        axes[0, j].set_title(f"{name}: overlap vs identical-copies null", fontsize=9)
        axes[0, j].legend(fontsize=7)
        sh = v["null_shuffled"]
        if "null_values" in sh:
            axes[1, j].hist(sh["null_values"], bins=20, color="C7")
            axes[1, j].axvline(sh["observed"], color="C3", lw=2, label=f"real order (p = {sh['p']:.3g})")
            axes[1, j].legend(fontsize=7)
        axes[1, j].set_xlabel("mean successive overlap over checkpoint orders")
        axes[1, j].set_ylabel("orders")
    return _save(fig, path)


def success_sets(per_task_sizes: dict[str, int], n_features: int, null_95, path, title: str = "") -> Path:
    """Per-task RL-success set sizes and their intersection, with the random-subset null's 95% interval on the
    intersection."""
    plt = _plt()
    labels = list(per_task_sizes) + ["∩ all"]
    vals = list(per_task_sizes.values()) + [n_features]
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(labels), 3.4))
    ax.bar(range(len(vals)), vals, color=["C0"] * (len(vals) - 1) + ["C3"])
    if null_95:
        ax.errorbar(
            [len(vals) - 1],
            [np.mean(null_95)],
            yerr=[[np.mean(null_95) - null_95[0]], [null_95[1] - np.mean(null_95)]],
            fmt="kx",
            capsize=4,
            label="random-subset null (95%)",
        )
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(vals)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("selected latents")
    ax.set_title(title)
    return _save(fig, path)
