"""Intervention experiments: accuracy with and without a feature edit, with statistics and controls.

`run_intervention` scores every task's problems (greedy decoding, `score_problems`) once without
and once with the edit built by `edit_factory(feature_ids)` (applied with `intervene`), then:

- an exact McNemar test on the paired per-sample correctness (`mcnemar_paired`);
- a paired bootstrap 95% interval for the accuracy delta (`scipy.stats.bootstrap`, percentile);
- a control distribution: the same edit on `n_controls` random feature sets matched on firing
  frequency (`matched_random_features`), with the real delta's rank and an empirical two-sided
  p-value `(1 + #{controls with |delta| >= |real delta|}) / (n_controls + 1)`.

Tasks named in `held_out` (not used to select the features) are reported separately in `summary`.

Example::

    freq = encoder_stats(cc, acts)["firing_rate"]
    res = run_intervention(rl_model, tok, cc, "rl", success_ids, ablate,
                           {d: eval_problems(d, 500) for d in domains}, firing_freq_L=freq,
                           held_out={"sort"})
    res.save("ablate_rl.json")
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import bootstrap

from featalign.crosscoder.model import Crosscoder
from featalign.evaluation import mcnemar_paired, score
from featalign.interventions.edits import Edit, as_feature_ids, check_features, intervene
from featalign.io import atomic_write_json, provenance, read_json
from featalign.organisms.tasks import Problem
from featalign.tasks import Task, TaskSet

# --- matched random controls ---------------------------------------------------------------------


def _freq_array(firing_freq_L) -> np.ndarray:
    if isinstance(firing_freq_L, torch.Tensor):
        firing_freq_L = firing_freq_L.detach().cpu().double().numpy()
    f = np.asarray(firing_freq_L, dtype=np.float64).reshape(-1)
    if f.size == 0:
        raise ValueError("firing_freq_L is empty")
    if not np.isfinite(f).all():
        raise ValueError("firing_freq_L must be finite (one firing frequency per latent)")
    return f


def firing_bins(firing_freq_L, n_bins: int = 10) -> np.ndarray:
    """Firing-frequency bin of each latent: 0 for latents that never fire, 1..n_bins for quantile
    bins of the alive latents' frequencies. Dead latents get a bin of their own so that a rarely
    firing feature is never matched with latents whose edit does nothing; tied frequencies always
    share a bin."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    f = _freq_array(firing_freq_L)
    bins = np.zeros(f.size, dtype=np.int64)
    alive = f > 0
    if alive.any():
        inner = np.unique(np.quantile(f[alive], np.linspace(0, 1, n_bins + 1))[1:-1])
        bins[alive] = 1 + np.searchsorted(inner, f[alive], side="right")
    return bins


#: the flag help of `size_bins` wherever a command draws matched controls
SIZE_BINS_HELP = (
    "also match the controls on the size of what each latent writes when it fires (mean activation x decoder "
    "norm, `encoder_stats`' mean_recon_norm): this many quantile bins within each firing-frequency bin "
    "(0: frequency only)"
)


def matching_bins(firing_freq_L, n_bins: int = 10, size_L=None, size_bins: int = 0) -> np.ndarray:
    """The cells random controls are drawn from: `firing_bins`, and with `size_L` ([L], e.g. encoder_stats'
    `mean_recon_norm`) and `size_bins` >= 2 each firing bin split again into `size_bins` quantile bins of the size.

    Frequency alone lets a control with a tiny reconstruction stand in for a feature with a large one; the size
    split is within each firing bin, so every cell keeps about 1 / (n_bins * size_bins) of the alive latents."""
    bins = firing_bins(firing_freq_L, n_bins)
    if size_L is None or size_bins < 2:
        return bins
    size = _freq_array(size_L)
    if size.size != bins.size:
        raise ValueError(f"size_L has {size.size} entries, firing_freq_L {bins.size}: give one size per latent")
    out = bins * (size_bins + 1)
    for b in np.unique(bins[bins > 0]):
        in_b = bins == b
        out[in_b] += firing_bins(size[in_b], size_bins)  # a size <= 0 (writes nothing) gets a cell of its own
    return out


def _check_ids(ids: tuple[int, ...], n_latents: int) -> tuple[int, ...]:
    bad = [k for k in ids if not 0 <= k < n_latents]
    if bad:
        raise ValueError(f"feature ids {bad[:10]} out of range: there are latents 0..{n_latents - 1}")
    if len(set(ids)) != len(ids):
        raise ValueError("feature ids must be distinct")
    return ids


def matched_random_features(
    firing_freq_L, feature_ids, n_draws: int, seed: int = 0, n_bins: int = 10, size_L=None, size_bins: int = 0
) -> list[tuple[int, ...]]:
    """`n_draws` random feature sets matched to `feature_ids` on firing frequency (and with `size_L` and
    `size_bins` on the size of their reconstruction too: `matching_bins`): for each chosen feature, a latent
    drawn uniformly from the same cell, never a chosen one and never twice in one draw. Deterministic for a
    given seed."""
    f = _freq_array(firing_freq_L)
    ids = _check_ids(as_feature_ids(feature_ids), f.size)
    if n_draws < 0:
        raise ValueError(f"n_draws must be >= 0, got {n_draws}")
    bins = matching_bins(f, n_bins, size_L, size_bins)
    chosen = np.zeros(f.size, dtype=bool)
    chosen[list(ids)] = True
    pools = {}
    for b in sorted({int(bins[k]) for k in ids}):
        pool = np.flatnonzero((bins == b) & ~chosen)
        need = sum(int(bins[k]) == b for k in ids)
        if pool.size < need:
            raise ValueError(
                f"matching cell {b} has {pool.size} unchosen latents but {need} chosen features need matches; "
                f"use fewer bins (n_bins={n_bins}, size_bins={size_bins}) or fewer features"
            )
        pools[b] = pool
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_draws):
        picked: dict[int, list[int]] = {}
        out = []
        for k in ids:
            b = int(bins[k])
            if b not in picked:
                need = sum(int(bins[j]) == b for j in ids)
                picked[b] = [int(x) for x in rng.choice(pools[b], size=need, replace=False)]
            out.append(picked[b].pop())
        draws.append(tuple(out))
    return draws


# --- results -------------------------------------------------------------------------------------


@dataclass
class TaskResult:
    task: str
    held_out: bool
    n: int
    acc_without: float
    acc_with: float
    delta: float  # acc_with - acc_without
    ci_low: float  # paired bootstrap 95% interval of delta
    ci_high: float
    newly_correct: int  # wrong without, right with
    newly_wrong: int  # right without, wrong with
    mcnemar_p: float  # exact McNemar
    subset_n: int = 0  # selected samples (e.g. base-fail / RL-success); 0 = no subset given
    subset_acc_without: float | None = None  # None when no subset was given
    subset_acc_with: float | None = None
    subset_delta: float | None = None
    subset_mcnemar_p: float | None = None
    subset_control_deltas: list[float] = field(default_factory=list)  # the controls' deltas on the subset
    subset_control_p: float | None = None  # a subset selected on the unedited model's correctness regresses
    # under any edit, so its delta means something only next to the controls' subset deltas
    nonfinite_frac: float = 0.0  # share of output rows with NaN/inf logits under the edit
    control_deltas: list[float] = field(default_factory=list)
    control_rank: int = 0  # number of controls with delta < this delta
    control_p: float = float("nan")  # empirical two-sided p among controls (NaN without controls)
    correct_without: list[bool] = field(default_factory=list)
    correct_with: list[bool] = field(default_factory=list)


@dataclass
class InterventionResult:
    model_name: str
    features: list[int]
    edit: str  # repr of the real edit
    seed: int
    control_features: list[list[int]]
    tasks: dict[str, TaskResult]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InterventionResult:
        d = dict(d)
        d["tasks"] = {k: TaskResult(**v) for k, v in d["tasks"].items()}
        return cls(**d)

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, {**self.to_dict(), "provenance": provenance()})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> InterventionResult:
        d = read_json(path)
        d.pop("provenance", None)
        return cls.from_dict(d)

    def summary(self) -> dict[str, dict]:
        """Selection tasks and held-out tasks separately: per-task rows and the mean delta."""
        out = {}
        for group, held in (("selection", False), ("held_out", True)):
            rows = {
                k: {
                    f: getattr(t, f)
                    for f in (
                        "n",
                        "acc_without",
                        "acc_with",
                        "delta",
                        "ci_low",
                        "ci_high",
                        "mcnemar_p",
                        "control_p",
                        "subset_n",
                        "subset_acc_without",
                        "subset_acc_with",
                        "subset_delta",
                        "subset_control_p",
                        "nonfinite_frac",
                    )
                }
                for k, t in self.tasks.items()
                if t.held_out == held
            }
            if rows:
                out[group] = {"tasks": rows, "mean_delta": float(np.mean([r["delta"] for r in rows.values()]))}
        return out


# --- statistics ----------------------------------------------------------------------------------


def paired_bootstrap_ci(
    without: np.ndarray, with_: np.ndarray, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(with_) - mean(without), resampling pairs."""
    a, b = np.asarray(without, dtype=float), np.asarray(with_, dtype=float)
    d = b - a
    if d.size == 0:
        return float("nan"), float("nan")
    if np.all(d == d[0]):  # every resample gives the same delta
        return float(d[0]), float(d[0])
    res = bootstrap(
        (a, b),
        lambda x, y, axis: y.mean(axis) - x.mean(axis),
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=level,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def control_stats(delta: float, control_deltas: Sequence[float]) -> tuple[int, float]:
    """(rank = #controls below delta, empirical two-sided p with the +1 correction)."""
    c = np.asarray(control_deltas, dtype=float)
    if c.size == 0:
        return 0, float("nan")
    rank = int((c < delta).sum())
    p = (1 + int((np.abs(c) >= abs(delta) - 1e-12).sum())) / (c.size + 1)
    return rank, float(p)


# --- the experiment ------------------------------------------------------------------------------


def as_task_dict(tasks) -> dict:
    """{name: Task or list of organisms Problems} from a TaskSet or such a mapping: what the experiments score."""
    return dict(tasks.tasks) if isinstance(tasks, TaskSet) else dict(tasks)


def _score_tasks(model, tokenizer, tasks: dict, batch_size: int) -> dict[str, np.ndarray]:
    return {k: score(model, tokenizer, task, batch_size) for k, task in tasks.items()}


def _score_edited(model, tokenizer, crosscoder, model_name, edit, tasks, batch_size, positions):
    """Per-task correctness under `edit`, and per-task share of output rows with non-finite logits."""
    got, nonfinite = {}, {}
    for k, probs in tasks.items():
        with intervene(model, crosscoder, model_name, edit, positions=positions) as mon:
            got[k] = score(model, tokenizer, probs, batch_size)
        nonfinite[k] = mon.nonfinite_frac
    return got, nonfinite


def _edit(edit_factory: Callable[[tuple[int, ...]], Edit], ids: tuple[int, ...]) -> Edit:
    e = edit_factory(ids)
    if not isinstance(e, Edit):
        raise TypeError(f"edit_factory must return an Edit (ablate/clamp/scale/steer), got {type(e).__name__}")
    return e


def _check_masks(masks: dict[str, np.ndarray] | None, tasks: Mapping[str, Sized], what: str) -> dict:
    if masks is None:
        return {}
    unknown = set(masks) - set(tasks)
    if unknown:
        raise ValueError(f"{what} names tasks {sorted(unknown)} that are not among the tasks {sorted(tasks)}")
    out = {}
    for k, m in masks.items():
        m = np.asarray(m)
        if m.shape != (len(tasks[k]),):
            raise ValueError(f"{what}[{k!r}] has shape {m.shape}; expected ({len(tasks[k])},), one entry per problem")
        out[k] = m.astype(bool)
    return out


@torch.no_grad()
def _warn_nonfinite(real_edit: Edit, nonfinite: dict[str, float]) -> None:
    """Non-finite logits are counted, never raised: say where, and what to change."""
    bad = {k: v for k, v in nonfinite.items() if v > 0}
    if bad:
        warnings.warn(
            f"{real_edit!r} gave NaN/inf logits on {', '.join(f'{k}: {v:.1%} of rows' for k, v in bad.items())}"
            " (its decoded answers count as wrong); lower the coefficient",
            RuntimeWarning,
            stacklevel=2,
        )


def _draw_controls(
    firing_freq_L,
    ids: tuple[int, ...],
    n_controls: int,
    seed: int,
    n_bins: int,
    n_latents: int,
    size_L=None,
    size_bins: int = 0,
) -> list[tuple[int, ...]]:
    """`n_controls` random latent sets matched to `ids` on firing frequency, and size (none for 0)."""
    if n_controls <= 0:
        return []
    if firing_freq_L is None:
        raise ValueError("firing_freq_L (one firing frequency per latent) is needed for the controls")
    if len(_freq_array(firing_freq_L)) != n_latents:
        raise ValueError(
            f"firing_freq_L has {len(_freq_array(firing_freq_L))} entries, the crosscoder has {n_latents} latents"
        )
    return matched_random_features(firing_freq_L, ids, n_controls, seed, n_bins, size_L, size_bins)


def _task_result(
    task: str,
    held_out: bool,
    w0: np.ndarray,
    w1: np.ndarray,
    ctrl_deltas: list[float],
    ctrl_sub: list[float],
    mask: np.ndarray | None,
    nonfinite: float,
    n_resamples: int,
    seed: int,
    with_controls: bool,
) -> TaskResult:
    """One task's numbers: accuracies without (`w0`) / with (`w1`) the edit, McNemar, bootstrap, control p,
    and the same on the selected samples `mask` when given."""
    test = mcnemar_paired(w0, w1)
    delta = float(w1.mean() - w0.mean())
    lo, hi = paired_bootstrap_ci(w0, w1, n_resamples, seed)
    rank, p_ctrl = control_stats(delta, ctrl_deltas)
    sub: dict[str, Any] = {}  # the subset_* fields of TaskResult
    if mask is not None and mask.any():
        s0, s1 = w0[mask], w1[mask]
        sub = dict(
            subset_n=int(mask.sum()),
            subset_acc_without=float(s0.mean()),
            subset_acc_with=float(s1.mean()),
            subset_delta=float(s1.mean() - s0.mean()),
            subset_mcnemar_p=mcnemar_paired(s0, s1).p_value,
            subset_control_deltas=ctrl_sub,
            subset_control_p=control_stats(float(s1.mean() - s0.mean()), ctrl_sub)[1] if with_controls else None,
        )
    return TaskResult(
        task=task,
        held_out=held_out,
        n=len(w0),
        acc_without=float(w0.mean()),
        acc_with=float(w1.mean()),
        delta=delta,
        ci_low=lo,
        ci_high=hi,
        newly_correct=test.base_fail_tuned_ok,
        newly_wrong=test.base_ok_tuned_fail,
        mcnemar_p=test.p_value,
        **sub,
        nonfinite_frac=nonfinite,
        control_deltas=ctrl_deltas,
        control_rank=rank,
        control_p=p_ctrl,
        correct_without=w0.tolist(),
        correct_with=w1.tolist(),
    )


def run_intervention(
    model,
    tokenizer,
    crosscoder: Crosscoder,
    model_name: str,
    features,
    edit_factory: Callable[[tuple[int, ...]], Edit],
    tasks: TaskSet | dict[str, Task | list[Problem]],
    n_controls: int = 20,
    seed: int = 0,
    batch_size: int = 500,
    firing_freq_L=None,
    held_out: set[str] | Sequence[str] = (),
    positions: str = "all",
    n_bins: int = 10,
    n_resamples: int = 2000,
    subset: dict[str, np.ndarray] | None = None,
    baseline: dict[str, np.ndarray] | None = None,
    size_L=None,
    size_bins: int = 0,
) -> InterventionResult:
    """Accuracy per task without / with `edit_factory(features)` on `model` (slot `model_name` of
    `crosscoder`), McNemar p, paired bootstrap interval of the delta, and `n_controls` random
    feature sets matched on `firing_freq_L` ([L], e.g. `encoder_stats(...)["firing_rate"]`), and with
    `size_bins` >= 2 on `size_L` too (e.g. `encoder_stats(...)["mean_recon_norm"]`; `matching_bins`).

    `subset` ({task: bool[n]}, optional) selects samples (e.g. base-fail / RL-success) whose
    accuracy is also reported on its own. `baseline` ({task: bool[n]}) is the unedited correctness
    if already scored (a coefficient sweep scores it once). Non-finite logits under an edit are
    counted per task (`nonfinite_frac`) and warned about, never raised."""
    ids = check_features(crosscoder, as_feature_ids(features))
    _check_ids(ids, crosscoder.cfg.n_latents)
    tasks = as_task_dict(tasks)
    if not tasks or any(len(p) == 0 for p in tasks.values()):
        raise ValueError("tasks must map each task name to a non-empty list of problems")
    held = set(held_out)
    unknown = held - set(tasks)
    if unknown:
        raise ValueError(f"held_out tasks {sorted(unknown)} are not among the tasks {sorted(tasks)}")
    subset = _check_masks(subset, tasks, "subset")
    baseline = _check_masks(baseline, tasks, "baseline")
    if baseline and set(baseline) != set(tasks):
        raise ValueError(f"baseline must give every task; missing {sorted(set(tasks) - set(baseline))}")
    controls = _draw_controls(firing_freq_L, ids, n_controls, seed, n_bins, crosscoder.cfg.n_latents, size_L, size_bins)
    real_edit = _edit(edit_factory, ids)
    control_edits = [_edit(edit_factory, c) for c in controls]

    base = baseline or _score_tasks(model, tokenizer, tasks, batch_size)
    edited, nonfinite = _score_edited(model, tokenizer, crosscoder, model_name, real_edit, tasks, batch_size, positions)
    ctrl_deltas: dict[str, list[float]] = {k: [] for k in tasks}
    ctrl_sub: dict[str, list[float]] = {k: [] for k in tasks}
    for e in control_edits:
        got, _ = _score_edited(model, tokenizer, crosscoder, model_name, e, tasks, batch_size, positions)
        for k in tasks:
            ctrl_deltas[k].append(float(got[k].mean() - base[k].mean()))
            if k in subset and subset[k].any():
                m = subset[k]
                ctrl_sub[k].append(float(got[k][m].mean() - base[k][m].mean()))
    _warn_nonfinite(real_edit, nonfinite)

    out = {
        k: _task_result(
            k,
            k in held,
            base[k],
            edited[k],
            ctrl_deltas[k],
            ctrl_sub[k],
            subset.get(k),
            nonfinite[k],
            n_resamples,
            seed + i,
            bool(controls),
        )
        for i, k in enumerate(tasks)
    }
    return InterventionResult(model_name, list(ids), repr(real_edit), seed, [list(c) for c in controls], out)


# --- coefficient sweeps --------------------------------------------------------------------------


@dataclass
class SweepResult:
    """`run_intervention` at each coefficient; `results[i]` belongs to `coefs[i]`."""

    coefs: list[float]
    results: list[InterventionResult]
    provenance: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"coefs": self.coefs, "results": [r.to_dict() for r in self.results], "provenance": self.provenance}

    @classmethod
    def from_dict(cls, d: dict) -> SweepResult:
        return cls(list(d["coefs"]), [InterventionResult.from_dict(r) for r in d["results"]], d.get("provenance", {}))

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SweepResult:
        return cls.from_dict(read_json(path))

    @property
    def tasks(self) -> list[str]:
        return list(self.results[0].tasks) if self.results else []

    def rows(self) -> list[dict]:
        """One row per (coefficient, task): accuracy with the edit, its delta and interval, the
        control band (5th/95th percentile of control deltas) and the non-finite-logit share."""
        out = []
        for c, r in zip(self.coefs, self.results):
            for k, t in r.tasks.items():
                cd = np.asarray(t.control_deltas, dtype=float)
                out.append(
                    dict(
                        coef=c,
                        task=k,
                        held_out=t.held_out,
                        acc_without=t.acc_without,
                        acc_with=t.acc_with,
                        delta=t.delta,
                        ci_low=t.ci_low,
                        ci_high=t.ci_high,
                        mcnemar_p=t.mcnemar_p,
                        subset_acc_with=t.subset_acc_with,
                        control_p=t.control_p,
                        control_lo=float(np.percentile(cd, 5)) if cd.size else float("nan"),
                        control_hi=float(np.percentile(cd, 95)) if cd.size else float("nan"),
                        nonfinite_frac=t.nonfinite_frac,
                    )
                )
        return out

    def nonfinite_coefs(self) -> list[float]:
        """Coefficients at which some task saw NaN/inf logits."""
        return [c for c, r in zip(self.coefs, self.results) if any(t.nonfinite_frac > 0 for t in r.tasks.values())]

    def plot(self, path: str | Path, title: str = "") -> Path:
        """Accuracy against the coefficient, one panel per task: the edit (with its bootstrap
        interval), the matched-control band (baseline + 5th..95th percentile of control deltas),
        and coefficients with non-finite logits marked with a red x."""
        from featalign.plotting import pyplot, save_figure

        plt = pyplot()
        rows, tasks = self.rows(), self.tasks
        cols = min(4, len(tasks))
        rows_n = -(-len(tasks) // cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 3.2 * rows_n), squeeze=False, sharey=True)
        for ax in axes.flat[len(tasks) :]:
            ax.set_visible(False)
        for ax, k in zip(axes.flat, tasks):
            rs = [r for r in rows if r["task"] == k]
            x = np.array([r["coef"] for r in rs])
            y = np.array([r["acc_with"] for r in rs])
            base = rs[0]["acc_without"]
            ax.errorbar(
                x,
                y,
                yerr=[
                    y - (base + np.array([r["ci_low"] for r in rs])),
                    (base + np.array([r["ci_high"] for r in rs])) - y,
                ],
                marker="o",
                capsize=3,
                label="features",
            )
            lo = np.array([r["control_lo"] for r in rs])
            if np.isfinite(lo).any():
                ax.fill_between(
                    x,
                    base + lo,
                    base + np.array([r["control_hi"] for r in rs]),
                    alpha=0.25,
                    color="gray",
                    label="matched controls (5-95%)",
                )
            ax.axhline(base, color="k", lw=0.8, ls="--", label="no edit")
            bad = [r["coef"] for r in rs if r["nonfinite_frac"] > 0]
            if bad:
                ax.scatter(bad, [0.0] * len(bad), marker="x", color="red", s=60, label="NaN/inf logits")
            ax.set_title(k + (" (held out)" if rs[0]["held_out"] else ""))
            ax.set_xlabel("coefficient")
        for row in axes:
            row[0].set_ylabel("accuracy")
        axes[0][0].legend(fontsize=7)
        if title:
            fig.suptitle(title)
        return save_figure(fig, path)


def _at_coef(edit_at: Callable[[tuple[int, ...], float], Edit], c: float) -> Callable[[tuple[int, ...]], Edit]:
    """`ids -> edit_at(ids, c)`: one coefficient's edit factory."""
    return lambda ids: edit_at(ids, c)


@torch.no_grad()
def coefficient_sweep(
    model,
    tokenizer,
    crosscoder: Crosscoder,
    model_name: str,
    features,
    edit_at: Callable[[tuple[int, ...], float], Edit],
    coefs: Sequence[float],
    tasks: TaskSet | dict[str, Task | list[Problem]],
    n_controls: int = 20,
    progress: bool = True,
    **kwargs,
) -> SweepResult:
    """`run_intervention` with `edit_at(ids, coef)` for each coefficient (e.g.
    `lambda ids, c: steer(ids, c, typical, decoder="rl")` or `lambda ids, c: scale(ids, c)`), with
    the unedited baseline scored once and the same matched controls at every coefficient.
    Coefficients that give NaN/inf logits are kept in the result (see `SweepResult.nonfinite_coefs`)."""
    from tqdm.auto import tqdm

    coefs = [float(c) for c in coefs]
    if not coefs:
        raise ValueError("coefs is empty: give at least one coefficient")
    tasks = as_task_dict(tasks)
    baseline = kwargs.pop("baseline", None) or _score_tasks(model, tokenizer, tasks, kwargs.get("batch_size", 500))
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # summarised once below
        for c in tqdm(coefs, desc="coefficient sweep", disable=not progress):
            results.append(
                run_intervention(
                    model,
                    tokenizer,
                    crosscoder,
                    model_name,
                    features,
                    _at_coef(edit_at, c),
                    tasks,
                    n_controls=n_controls,
                    baseline=baseline,
                    **kwargs,
                )
            )
    out = SweepResult(coefs, results, provenance())
    bad = out.nonfinite_coefs()
    if bad:
        warnings.warn(
            f"coefficient sweep: NaN/inf logits at coefficients {bad} (their answers count as wrong)",
            RuntimeWarning,
            stacklevel=2,
        )
    return out
