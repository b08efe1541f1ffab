"""Feature drift over a checkpoint series (e.g. the organisms' 5 SFT and 5 RL checkpoints).

Two alignments (see docs/analysis.md for the trade-off):

* joint: one crosscoder over [base, ckpt_1, ..., ckpt_n]. Latent l is the same feature at every
  checkpoint, so tracking is exact; cost and the sparsity penalty grow with n + 1 decoders.
* pairwise: one (base, ckpt_t) crosscoder per checkpoint. Each is a standard 2-model crosscoder,
  but latents of different crosscoders must be matched (Hungarian matching on the cosine of
  their checkpoint-side decoders, kept when >= match_cos).

Per checkpoint t the model-specific score of a latent is its NRN against the base,
s_t = ||d_t|| / (||d_base|| + ||d_t||). Outputs: overlap of the top-k (by s_t) between successive
checkpoints, each final top-k feature's stabilisation checkpoint, drift curves (s_t and decoder
cosine to the base direction), and new specific features per checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from featalign.config import JsonConfig


class SeriesError(ValueError):
    """A checkpoint series with gaps, duplicates or an unknown order."""


@dataclass
class Checkpoint:
    """One checkpoint folder and its place in the series (`index` 1..n or training `step`);
    `CheckpointSeries.validate` orders by them."""

    index: int | None  # 1..n position in the series (None: unknown)
    step: int | None  # training step (None: unknown)
    path: str


@dataclass
class CheckpointSeries:
    """A base model and its ordered checkpoints; `validate()` refuses gaps and unknown order."""

    name: str
    base: str
    checkpoints: list[Checkpoint]

    def validate(self) -> CheckpointSeries:
        cks = self.checkpoints
        if not cks:
            raise SeriesError(f"series {self.name!r} has no checkpoints")
        known_idx = [c.index for c in cks if c.index is not None]
        known_steps = [c.step for c in cks if c.step is not None]
        if len(known_idx) == len(cks):  # every checkpoint has an index
            idx = sorted(known_idx)
            if len(set(idx)) != len(idx):
                raise SeriesError(
                    f"series {self.name!r}: duplicate checkpoint indices {idx}; each checkpoint needs its own"
                )
            missing = sorted(set(range(1, max(idx) + 1)) - set(idx))
            if missing:
                raise SeriesError(
                    f"series {self.name!r} has a gap: checkpoint(s) {missing} missing of 1..{max(idx)}; "
                    "finish building them or analyse a contiguous prefix"
                )
            self.checkpoints = [c for _, c in sorted(zip(known_idx, cks), key=lambda p: p[0])]
        elif len(known_steps) == len(cks):  # every checkpoint has a step
            steps = sorted(known_steps)
            if len(set(steps)) != len(steps):
                raise SeriesError(f"series {self.name!r}: duplicate steps {steps}; the order is ambiguous")
            gaps = np.diff([0] + steps)
            if len(gaps) > 1 and gaps.max() > 1.5 * np.median(gaps):
                raise SeriesError(
                    f"series {self.name!r} looks like it has a gap: steps {steps} (spacing {gaps.tolist()}); "
                    "pass every checkpoint or give explicit indices"
                )
            self.checkpoints = [c for _, c in sorted(zip(known_steps, cks), key=lambda p: p[0])]
            for i, c in enumerate(self.checkpoints):
                c.index = i + 1
        else:
            unknown = [c.path for c in cks if c.step is None and c.index is None]
            raise SeriesError(
                f"series {self.name!r}: unknown order for {unknown or [c.path for c in cks]} "
                "(no checkpoint index or step in featalign.json); pass steps/indices explicitly"
            )
        return self

    @property
    def names(self) -> list[str]:
        return ["base"] + [f"{self.name}@{c.index}" for c in self.checkpoints]

    def model_dirs(self) -> dict[str, str]:
        return dict(zip(self.names, [self.base] + [c.path for c in self.checkpoints]))


def series_from_dirs(
    name: str, base: str | Path, dirs: list[str | Path], steps: list[int] | None = None
) -> CheckpointSeries:
    """Series from checkpoint folders; order from `steps` or from each folder's featalign.json."""
    cks = []
    for i, d in enumerate(dirs):
        meta_p = Path(d) / "featalign.json"
        meta = json.loads(meta_p.read_text()) if meta_p.exists() else {}
        if steps is not None:
            cks.append(Checkpoint(None, steps[i], str(d)))
        else:
            cks.append(Checkpoint(meta.get("checkpoint"), meta.get("step"), str(d)))
    return CheckpointSeries(name, str(base), cks).validate()


def series_from_organisms(org, kind: str, domain: str | None = None) -> CheckpointSeries:
    """The organisms' SFT or RL checkpoint series (ckpt-1..n); a missing checkpoint is an error."""
    from featalign.organisms.model import is_complete

    n = org.config.n_checkpoints
    dirs = [org.model_dir(kind, domain, k) for k in range(1, n + 1)]
    missing = [str(d) for d in dirs if not is_complete(d)]
    if missing:
        raise SeriesError(f"{kind} series has a gap: {missing} not built; run ensure_organisms() to finish the build")
    return series_from_dirs(kind, org.base_dir, dirs)


# --- metrics ------------------------------------------------------------------------------------------


@dataclass
class DriftConfig(JsonConfig):
    """Thresholds of the drift analysis: top-k size, the NRN that counts as model-specific, the stabilisation
    tolerances, and the decoder cosine a pairwise match needs."""

    top_k: int = 50
    specific_threshold: float = 0.9  # NRN vs base at or above this -> model-specific (for "new features")
    stable_tol: float = 0.05  # |s_t - s_final| <= tol ...
    stable_cos: float = 0.9  # ... and cos(d_t, d_final) >= stable_cos from this checkpoint on -> stabilised
    match_cos: float = 0.7  # pairwise mode: a match between crosscoders needs this decoder cosine
    min_firing_rate: float = 0.0


def top_k(score_L: Tensor, norm_L: Tensor, k: int, alive_L: Tensor | None = None) -> list[int]:
    """Indices of the k highest scores (ties broken by the larger norm); dead latents excluded."""
    s, n = score_L.double().numpy(), norm_L.double().numpy()
    order = np.lexsort((-n, -s))
    if alive_L is not None:
        order = order[alive_L.numpy()[order]]
    return order[:k].tolist()


def stabilisation_index(s_FT: np.ndarray, cos_final_FT: np.ndarray, tol: float, cos_min: float) -> np.ndarray:
    """First checkpoint position (1-based) from which every later state is within tolerance of the final one."""
    ok = (np.abs(s_FT - s_FT[:, -1:]) <= tol) & (cos_final_FT >= cos_min)
    T = ok.shape[1]
    # stable from t if ok[t:] all True: scan from the end
    tail_ok = np.flip(np.cumprod(np.flip(ok, 1), 1), 1).astype(bool)
    first = np.where(tail_ok.any(1), tail_ok.argmax(1), T - 1)
    return first + 1


def topk_entry_index(topk_sets: list[set[int]], feats: list[int]) -> np.ndarray:
    """For each feature: first checkpoint (1-based) from which it is in the top-k at every later checkpoint."""
    T = len(topk_sets)
    out = []
    for f in feats:
        t = T
        while t > 0 and f in topk_sets[t - 1]:
            t -= 1
        out.append(t + 1)
    return np.array(out)


@dataclass
class DriftResult:
    """Drift of one checkpoint series (joint or pairwise alignment): per-checkpoint top-k, successive overlaps,
    stabilisation and top-k entry of each final top-k feature, specific / new feature counts, and the drift curves."""

    series: str
    mode: str
    indices: list[int]  # checkpoint positions 1..n
    steps: list[int | None]
    topk: list[list[int]]  # per checkpoint (latent ids of that checkpoint's crosscoder in pairwise mode)
    overlap: list[float]  # successive checkpoints, n - 1 values
    final_features: list[int]
    stabilisation: list[int]  # per final top-k feature: checkpoint position of stabilisation
    topk_entry: list[int]  # per final top-k feature: checkpoint from which it stays in the top-k
    n_specific: list[int]
    new_features: list[int]
    curves: dict[str, list[list[float]]] = field(default_factory=dict)  # "nrn", "cos_base" [feature][t]
    k: int = 0  # the top-k size the overlaps are fractions of (0: len(final_features))
    n_alive: list[int] = field(default_factory=list)  # per checkpoint: alive latents (what n_specific counts among)

    def overlap_counts(self) -> list[int]:
        """The successive overlaps as counts of the k (pairwise: matched pairs)."""
        k = self.k or len(self.final_features)
        return [round(o * k) for o in self.overlap]

    def specific_last_interval(self) -> dict | None:
        """The specific features at the last checkpoint with their `count_interval` over its alive latents (None
        without a record of the alive count, or with no alive latent)."""
        from featalign.analysis.controls import count_interval

        if not self.n_alive or self.n_alive[-1] == 0:
            return None
        n, alive = self.n_specific[-1], self.n_alive[-1]
        return count_interval(np.r_[np.ones(n), np.zeros(alive - n)]).as_dict()

    def summary(self) -> dict:
        st = np.array(self.stabilisation)
        k = self.k or len(self.final_features)
        return {
            "series": self.series,
            "mode": self.mode,
            "k": len(self.final_features),
            "overlap": self.overlap,
            "overlap_95": [overlap_interval(c, k) for c in self.overlap_counts()],
            "mean_overlap": float(np.mean(self.overlap)) if self.overlap else None,
            "stabilisation_median": float(np.median(st)) if len(st) else None,
            "stabilisation_median_95": median_interval(st),
            "stabilisation_hist": {int(k): int((st == k).sum()) for k in self.indices},
            "topk_entry_median": float(np.median(self.topk_entry)) if self.topk_entry else None,
            "topk_entry_median_95": median_interval(self.topk_entry),
            "n_specific": self.n_specific,
            "n_specific_last": self.specific_last_interval(),
            "new_features": self.new_features,
            "steps": self.steps,
        }


def median_interval(x, n_resamples: int = 2000, seed: int = 0) -> list[float] | None:
    """95% percentile bootstrap interval of the median (None without data; a constant sample gets a zero-width
    interval)."""
    return bootstrap_interval(x, np.median, n_resamples, seed)


def bootstrap_interval(x, statistic=np.median, n_resamples: int = 2000, seed: int = 0) -> list[float] | None:
    """95% percentile bootstrap interval of `statistic` (a numpy reduction taking `axis`) over the sample `x`
    (None without data; a constant sample gets a zero-width interval)."""
    x = np.asarray(x, float)
    if len(x) < 2 or np.all(x == x[0]):
        return [float(x[0]), float(x[0])] if len(x) else None
    from scipy.stats import bootstrap

    r = bootstrap(
        (x,), statistic, n_resamples=n_resamples, method="percentile", random_state=np.random.default_rng(seed)
    )
    return [float(r.confidence_interval.low), float(r.confidence_interval.high)]


def overlap_interval(count: int, k: int) -> list[float]:
    """95% interval of an overlap count/k: `count_interval` over the k top features of the earlier checkpoint
    (each in the later top-k or not; percentile bootstrap, exact Clopper-Pearson at 0 or k), as fractions of k."""
    from featalign.analysis.controls import count_interval

    if k == 0:
        return [float("nan"), float("nan")]
    ci = count_interval(np.r_[np.ones(count), np.zeros(k - count)])
    return [ci.low / k, ci.high / k]


def order_statistic(result: DriftResult, statistic: str = "mean_overlap") -> float:
    """The statistic the shuffled-order null tests: `mean_overlap`, the mean top-k overlap between successive
    checkpoints (high: neighbours share their top features)."""
    if statistic != "mean_overlap":
        raise ValueError(f"statistic must be 'mean_overlap', got {statistic!r}")
    return float(np.mean(result.overlap))


def checkpoint_orders(n_checkpoints: int, n_permutations: int, seed: int = 0) -> tuple[list[tuple[int, ...]], bool]:
    """(orders, exact): every order of the checkpoints when there are at most `n_permutations` of them (exact),
    else `n_permutations` seeded random orders (each a permutation of 0..n-1)."""
    import itertools
    import math

    if math.factorial(n_checkpoints) <= n_permutations:
        return list(itertools.permutations(range(n_checkpoints))), True
    rng = np.random.default_rng(seed)
    return [tuple(int(i) for i in rng.permutation(n_checkpoints)) for _ in range(n_permutations)], False


def shuffled_order_null(
    drift: Callable[[Sequence[int]], DriftResult],
    n_checkpoints: int,
    statistic: str = "mean_overlap",
    n_permutations: int = 1000,
    seed: int = 0,
) -> dict:
    """Does the checkpoints' training order carry structure? `drift(order)` is the drift analysis of the series
    with its checkpoints in `order` (0-based positions of the real series); the observed statistic (real order)
    is read against its distribution over checkpoint orders.

    Exact when n! <= n_permutations (every order, the real one included: p = share of orders whose statistic is
    >= the observed one); else `n_permutations` seeded random orders and p = (1 + #>=) / (1 + n). One-sided:
    successive checkpoints more alike than in a random order."""
    observed = order_statistic(drift(list(range(n_checkpoints))), statistic)
    orders, exact = checkpoint_orders(n_checkpoints, n_permutations, seed)
    null = np.array([order_statistic(drift(list(o)), statistic) for o in orders])
    tol = 1e-12
    hits = int((null >= observed - tol).sum())
    p = hits / len(null) if exact else (1 + hits) / (1 + len(null))
    return {
        "statistic": statistic,
        "observed": observed,
        "n_permutations": len(null),
        "exact": exact,
        "null_mean": float(null.mean()),
        "null_95": [float(np.quantile(null, 0.025)), float(np.quantile(null, 0.975))],
        "p": float(p),
        "null_values": null.tolist(),
    }


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


def drift_joint(
    dec_LMK: Tensor,
    cfg: DriftConfig | None = None,
    alive_L: Tensor | None = None,
    series: str = "",
    steps: list[int | None] | None = None,
) -> DriftResult:
    """Drift from one joint crosscoder's decoders `[L, 1 + n, K]` (model 0 = base, then checkpoints in order)."""
    cfg = cfg or DriftConfig()
    L, M, _ = dec_LMK.shape
    if M < 3:
        raise SeriesError("a joint drift crosscoder needs the base and >= 2 checkpoints")
    n = dec_LMK.norm(dim=-1)  # [L, M]
    T = M - 1
    s_LT = torch.stack([n[:, t] / (n[:, 0] + n[:, t]).clamp_min(1e-12) for t in range(1, M)], 1)
    cos_base_LT = torch.stack([_cos(dec_LMK[:, t], dec_LMK[:, 0]) for t in range(1, M)], 1)
    cos_final_LT = torch.stack([_cos(dec_LMK[:, t], dec_LMK[:, -1]) for t in range(1, M)], 1)
    k = min(cfg.top_k, L)
    tops = [top_k(s_LT[:, t], n[:, t + 1], k, alive_L) for t in range(T)]
    sets = [set(x) for x in tops]
    overlap = [len(sets[t] & sets[t + 1]) / k for t in range(T - 1)]
    final = tops[-1]
    stab = stabilisation_index(s_LT[final].numpy(), cos_final_LT[final].numpy(), cfg.stable_tol, cfg.stable_cos)
    alive = torch.ones(L, dtype=torch.bool) if alive_L is None else alive_L
    spec = [set(torch.nonzero((s_LT[:, t] >= cfg.specific_threshold) & alive).flatten().tolist()) for t in range(T)]
    new = [len(spec[0])] + [len(spec[t] - spec[t - 1]) for t in range(1, T)]
    return DriftResult(
        series,
        "joint",
        list(range(1, T + 1)),
        list(steps or [None] * T),
        tops,
        overlap,
        final,
        stab.tolist(),
        topk_entry_index(sets, final).tolist(),
        [len(s) for s in spec],
        new,
        {"nrn": s_LT[final].tolist(), "cos_base": cos_base_LT[final].tolist()},
        k,
        [int(alive.sum())] * T,
    )


def _match(a_AK: Tensor, b_BK: Tensor, min_cos: float) -> list[tuple[int, int, float]]:
    """1-1 matching of two sets of decoder vectors maximising total cosine (pairs with cos >= min_cos)."""
    from scipy.optimize import linear_sum_assignment

    if len(a_AK) == 0 or len(b_BK) == 0:
        return []
    c = _cos(a_AK[:, None], b_BK[None]).numpy()
    r, q = linear_sum_assignment(-c)
    return [(int(i), int(j), float(c[i, j])) for i, j in zip(r, q) if c[i, j] >= min_cos]


def drift_pairwise(
    decs: list[Tensor],
    cfg: DriftConfig | None = None,
    alive: Sequence[Tensor | None] | None = None,
    series: str = "",
    steps: list[int | None] | None = None,
) -> DriftResult:
    """Drift from per-checkpoint (base, ckpt_t) crosscoders' decoders, each `[L_t, 2, K]` (base first)."""
    cfg = cfg or DriftConfig()
    T = len(decs)
    if T < 2:
        raise SeriesError("pairwise drift needs >= 2 checkpoints")
    alive = alive or [None] * T
    s = [d[:, 1].norm(dim=-1) / (d[:, 0].norm(dim=-1) + d[:, 1].norm(dim=-1)).clamp_min(1e-12) for d in decs]
    k = min([cfg.top_k] + [len(d) for d in decs])
    tops = [top_k(s[t], decs[t][:, 1].norm(dim=-1), k, alive[t]) for t in range(T)]
    overlap = []
    for t in range(T - 1):
        m = _match(decs[t][tops[t], 1], decs[t + 1][tops[t + 1], 1], cfg.match_cos)
        overlap.append(len(m) / k)
    final = tops[-1]
    # track the final top-k back through every crosscoder by best decoder match (any latent)
    s_FT = np.zeros((k, T))
    cos_final = np.zeros((k, T))
    cos_base = np.zeros((k, T))
    in_top = np.zeros((k, T), bool)
    fin_vec = decs[-1][final, 1]
    for t in range(T):
        c = _cos(fin_vec[:, None], decs[t][None, :, 1]).numpy()  # [k, L_t]
        j = c.argmax(1)
        s_FT[:, t], cos_final[:, t] = s[t][j].numpy(), c[np.arange(k), j]
        cos_base[:, t] = _cos(decs[t][j, 1], decs[t][j, 0]).numpy()
        in_top[:, t] = np.isin(j, tops[t]) & (cos_final[:, t] >= cfg.match_cos)
    stab = stabilisation_index(s_FT, cos_final, cfg.stable_tol, cfg.stable_cos)
    entry = [T + 1 - int(np.flip(row).cumprod().sum()) for row in in_top]
    spec = []
    for t in range(T):
        a = torch.ones(len(s[t]), dtype=torch.bool) if alive[t] is None else alive[t]
        spec.append(torch.nonzero((s[t] >= cfg.specific_threshold) & a).flatten())
    new = [len(spec[0])]
    for t in range(1, T):
        m = _match(decs[t][spec[t], 1], decs[t - 1][spec[t - 1], 1], cfg.match_cos)
        new.append(len(spec[t]) - len(m))
    return DriftResult(
        series,
        "pairwise",
        list(range(1, T + 1)),
        list(steps or [None] * T),
        tops,
        overlap,
        final,
        stab.tolist(),
        entry,
        [len(x) for x in spec],
        new,
        {"nrn": s_FT.tolist(), "cos_base": cos_base.tolist()},
        k,
        [len(s[t]) if (a := alive[t]) is None else int(a.sum()) for t in range(T)],
    )


def compare_stabilisation(
    a: DriftResult, b: DriftResult, n_resamples: int = 2000, seed: int = 0, what: str = "stabilisation"
) -> dict:
    """Does series a stabilise earlier than b? Median difference (bootstrap CI) and a one-sided Mann-Whitney U.

    `what`: "stabilisation" (value-based: within tolerance of the final state) or "topk_entry"
    (membership-based: stays in the top-k from then on; scale-free).
    """
    from scipy.stats import mannwhitneyu

    x, y = np.array(getattr(a, what), float), np.array(getattr(b, what), float)
    rng = np.random.default_rng(seed)
    d = [np.median(rng.choice(x, len(x))) - np.median(rng.choice(y, len(y))) for _ in range(n_resamples)]
    p = mannwhitneyu(x, y, alternative="less").pvalue if len(x) and len(y) else float("nan")
    ov = np.array(a.overlap) - np.array(b.overlap) if len(a.overlap) == len(b.overlap) else None
    return {
        "what": what,
        "a": a.series,
        "b": b.series,
        "median_a": float(np.median(x)),
        "median_b": float(np.median(y)),
        "median_diff": float(np.median(x) - np.median(y)),
        "median_diff_95": [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))],
        "mannwhitney_p_a_earlier": float(p),
        "mean_overlap_a": float(np.mean(a.overlap)),
        "mean_overlap_b": float(np.mean(b.overlap)),
        "overlap_diff_per_pair": ov.tolist() if ov is not None else None,
    }
