"""Matplotlib figures (Agg backend) for attribution, controls, drift and success features."""

from __future__ import annotations

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
    """Histogram (log counts) of each model's attribution score: mass near 1 means latents that model owns, near 1/M shared ones."""
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


def latent_scaling_scatter(nu_err: np.ndarray, nu_rec: np.ndarray, labels: list[str], path, thresholds=(0.3, 0.5),
                           title: str = "") -> Path:
    """nu_error against nu_recon with the artifact thresholds drawn, so complete-shrinkage and decoupling artifacts stand out."""
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


def count_bars(rows: list[tuple[str, float, float, float]], path, ylabel: str = "model-specific latents",
               title: str = "") -> Path:
    """Bars with interval whiskers: rows of (label, count, low, high)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(rows), 3.6))
    x = np.arange(len(rows))
    c = np.array([r[1] for r in rows])
    err = np.array([[r[1] - r[2] for r in rows], [r[3] - r[1] for r in rows]]).clip(0)
    ax.bar(x, c, yerr=err, capsize=4, color=[f"C{i}" for i in range(len(rows))])
    ax.set_xticks(x, [r[0] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


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


def success_sets(per_task_sizes: dict[str, int], n_features: int, null_95, path, title: str = "") -> Path:
    """Per-task RL-success set sizes and their intersection, with the random-subset null's 95% interval on the intersection."""
    plt = _plt()
    labels = list(per_task_sizes) + ["∩ all"]
    vals = list(per_task_sizes.values()) + [n_features]
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(labels), 3.4))
    ax.bar(range(len(vals)), vals, color=["C0"] * (len(vals) - 1) + ["C3"])
    if null_95:
        ax.errorbar([len(vals) - 1], [np.mean(null_95)], yerr=[[np.mean(null_95) - null_95[0]], [null_95[1] - np.mean(null_95)]],
                    fmt="kx", capsize=4, label="random-subset null (95%)")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(vals)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("selected latents")
    ax.set_title(title)
    return _save(fig, path)
