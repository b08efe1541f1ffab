"""Predict where RL will transfer from the base model's features, before running RL (docs/analysis.md).

The transfer study measures that RL's gains reach domains that share reasoning structure; the feature-level
study finds the features that carry them. If the base model's own feature space already says which domains use
the same features, the domain-by-domain similarity of those features should rank the measured transfer. This
module computes that similarity several ways, from one base model's activations on each domain's prompts,
and scores each against a measured transfer matrix (single-domain RL / SFT from the same base, evaluated on
every domain) by a Spearman rank correlation over the off-diagonal pairs, with a permutation null (domain
labels shuffled) and a domain-level bootstrap interval.

Measures (each a symmetric [T, T] matrix over the task set's tasks):

* `feature_mass`: weighted Jaccard sum_l min(m_a, m_b) / sum_l max(m_a, m_b) of the mean latent activations
  `m` (activation mass per latent) — overlap of the active-feature sets, weighted by how much each fires;
* `feature_cosine`: cosine of the mean latent activations;
* `attribution`: Jaccard of the top latents by activation x gradient of the correct answer's log-prob on
  the base's correct samples — the features that matter for correct answers (`gradient_attribution`);
* baselines that need no dictionary: `ngram` (Jaccard of the prompts' character n-gram sets) and
  `residual_cosine` (cosine of the mean residual activation at the same hook).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr

from featalign.analysis.success_features import gradient_attribution, pool_positions, prompt_activations
from featalign.config import JsonConfig
from featalign.evaluation import cmh_odds_ratio, transfer_matrix

MEASURES = ("feature_mass", "feature_cosine", "attribution", "ngram", "residual_cosine")
BASELINES = ("ngram", "residual_cosine")


@dataclass
class PredictionConfig(JsonConfig):
    """How domain profiles are pooled and the prediction is scored."""

    positions: str = "all"  # pooled prompt positions: 'all' (mean over the prompt) or 'last' (last prompt token)
    top_k: int = 32  # latents per domain in the attribution measure's top set
    ngram: int = 3  # character n-grams of the prompt baseline
    n_permutations: int = 5000
    n_boot: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.positions not in ("all", "last"):
            raise ValueError(f"positions must be 'all' or 'last', got {self.positions!r}")
        for name in ("top_k", "ngram", "n_permutations", "n_boot"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# --- similarity measures --------------------------------------------------------------------------------


def weighted_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """sum(min) / sum(max) of two non-negative vectors (1 for equal ones, 0 for disjoint supports)."""
    den = float(np.maximum(a, b).sum())
    return float(np.minimum(a, b).sum()) / den if den > 0 else 0.0


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; 0 when either vector is 0 (a domain on which nothing fires shares nothing)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; 0 for two empty sets (no evidence of sharing)."""
    return len(a & b) / len(a | b) if a | b else 0.0


def char_ngrams(prompts: list[str], n: int) -> set[str]:
    """Every character n-gram of the prompts (a prompt shorter than n counts as one gram)."""
    return {p[i : i + n] for p in prompts for i in range(max(1, len(p) - n + 1))}


def pairwise(items: list, fn) -> np.ndarray:
    """[T, T] matrix of fn(items[i], items[j])."""
    T = len(items)
    out = np.ones((T, T))
    for i in range(T):
        for j in range(T):
            if i != j:
                out[i, j] = fn(items[i], items[j])
    return out


@dataclass
class DomainProfile:
    """What the base model does on one domain's prompts: mean latent activation, mean residual, the top
    latents by attribution (None when not computed) and the prompts themselves."""

    mass_L: np.ndarray
    resid_D: np.ndarray
    prompts: list[str]
    top_attribution: set[int] | None = None


def similarity_matrices(profiles: dict[str, DomainProfile], cfg: PredictionConfig | None = None) -> dict:
    """{measure: [T, T]} over the profiles' tasks (in their order); `attribution` only when every profile has it."""
    cfg = cfg or PredictionConfig()
    ps = list(profiles.values())
    out = {
        "feature_mass": pairwise([p.mass_L for p in ps], weighted_jaccard),
        "feature_cosine": pairwise([p.mass_L for p in ps], cosine),
        "ngram": pairwise([char_ngrams(p.prompts, cfg.ngram) for p in ps], jaccard),
        "residual_cosine": pairwise([p.resid_D for p in ps], cosine),
    }
    if all(p.top_attribution is not None for p in ps):
        out["attribution"] = pairwise([p.top_attribution for p in ps], jaccard)
    return {m: out[m] for m in MEASURES if m in out}


# --- profiles from a model ------------------------------------------------------------------------------


@torch.no_grad()
def domain_profile(cc, model, problems, model_index: int = 0, cfg: PredictionConfig | None = None) -> DomainProfile:
    """The profile of one domain from a `featalign.models` bridge and a crosscoder (or a 1-model one, i.e. an
    SAE) whose slot `model_index` reads this model."""
    cfg = cfg or PredictionConfig()
    mass, resid = [], []
    for acts_STHD, mask_ST, last_S in prompt_activations(model, model.tokenizer, problems, cc.cfg.hooks):
        S, T = mask_ST.shape
        acts = acts_STHD.to(cc.W_enc.device, torch.float32)
        f_STL = cc.encode_as(acts.reshape(S * T, *acts.shape[2:]), model_index).view(S, T, -1)
        mass.append(pool_positions(f_STL, mask_ST, last_S, cfg.positions))
        resid.append(pool_positions(acts.reshape(S, T, -1), mask_ST, last_S, cfg.positions))
    return DomainProfile(
        torch.cat(mass).mean(0).cpu().numpy(), torch.cat(resid).mean(0).cpu().numpy(), [p.prompt for p in problems]
    )


def attribution_top_set(cc, model, problems, correct: np.ndarray, model_index: int, cfg: PredictionConfig) -> set:
    """The `top_k` latents with the largest mean activation x gradient on the base's correct samples."""
    kept = [p for p, ok in zip(problems, correct) if ok]
    if not kept:
        return set()
    attr_L = gradient_attribution(cc, model, model.tokenizer, kept, model_index, cfg.positions).mean(0)
    return set(attr_L.topk(min(cfg.top_k, attr_L.numel())).indices.tolist())


def domain_profiles(
    cc, model, task_set, base_correct: dict[str, np.ndarray] | None = None, model_index: int = 0, cfg=None
) -> dict[str, DomainProfile]:
    """A profile per task of `task_set`; with `base_correct` ({task: per-sample correctness of this model on
    the task's problems}) also the attribution top sets."""
    cfg = cfg or PredictionConfig()
    out = {}
    for task in task_set:
        prof = domain_profile(cc, model, task.problems, model_index, cfg)
        if base_correct is not None:
            prof.top_attribution = attribution_top_set(
                cc, model, task.problems, base_correct[task.name], model_index, cfg
            )
        out[task.name] = prof
    return out


# --- the measured transfer and the score ---------------------------------------------------------------


def measured_transfer(
    base: dict[str, np.ndarray], tuned: dict[str, dict[str, np.ndarray]], eval_names: list[str]
) -> dict[str, np.ndarray]:
    """{'delta_points': [R, E] accuracy delta, 'log_odds_ratio': [R, E] log CMH OR of one stratum} for the tuned
    models (rows, by training task) against the base on every eval task (columns)."""
    delta = transfer_matrix(base, tuned, eval_names)
    with np.errstate(divide="ignore"):
        log_or = np.array(
            [[np.log(cmh_odds_ratio([(base[e], tuned[t][e])]).odds_ratio) for e in eval_names] for t in tuned]
        )
    return {"delta_points": delta, "log_odds_ratio": log_or}


def off_diagonal_pairs(train: list[str], names: list[str]) -> list[tuple[int, int, int]]:
    """(row, i, j): row of the transfer matrix, i = index of its training task in `names`, j = an eval task
    other than the training one."""
    return [(r, names.index(t), j) for r, t in enumerate(train) for j in range(len(names)) if names[j] != t]


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


@dataclass
class PredictionScore:
    """Spearman between predicted similarity and measured transfer over the off-diagonal pairs, the one-sided
    permutation p (share of label shuffles with a correlation >= the observed one) and a bootstrap interval
    over domains (rows and columns resampled together)."""

    spearman: float
    ci: tuple[float, float]
    p_permutation: float
    n_pairs: int
    null_mean: float = float("nan")
    extra: dict = field(default_factory=dict)


def score_prediction(
    sim_TT: np.ndarray, transfer_RE: np.ndarray, train: list[str], names: list[str], cfg: PredictionConfig | None = None
) -> PredictionScore:
    """Score one similarity matrix (over `names`) against a transfer matrix (rows `train`, columns `names`)."""
    cfg = cfg or PredictionConfig()
    pairs = off_diagonal_pairs(train, names)
    y = np.array([transfer_RE[r, j] for r, _, j in pairs])
    rho = _spearman(np.array([sim_TT[i, j] for _, i, j in pairs]), y)
    rng = np.random.default_rng(cfg.seed)
    null = []
    for _ in range(cfg.n_permutations):
        perm = rng.permutation(len(names))  # the same shuffle of domain labels for rows and columns
        null.append(_spearman(np.array([sim_TT[perm[i], perm[j]] for _, i, j in pairs]), y))
    null_a = np.array(null)
    null_a = null_a[np.isfinite(null_a)]
    p = (1 + int((null_a >= rho - 1e-12).sum())) / (1 + len(null_a)) if np.isfinite(rho) else float("nan")
    boots = []
    train_idx = [names.index(t) for t in train]
    for _ in range(cfg.n_boot):
        pick = rng.choice(len(names), len(names))  # a bootstrap sample of domains (with repeats)
        xs, ys = [], []
        for i in pick:
            if i not in train_idx:
                continue
            r = train_idx.index(i)
            for j in pick:
                if j != i:
                    xs.append(sim_TT[i, j])
                    ys.append(transfer_RE[r, j])
        boots.append(_spearman(np.array(xs), np.array(ys)))
    b = np.array(boots)
    b = b[np.isfinite(b)]
    ci = (float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))) if len(b) else (float("nan"),) * 2
    return PredictionScore(rho, ci, float(p), len(pairs), float(null_a.mean()) if len(null_a) else float("nan"))


def score_all(
    sims: dict[str, np.ndarray],
    transfers: dict[str, tuple[np.ndarray, list[str]]],
    names: list[str],
    cfg: PredictionConfig | None = None,
) -> dict[str, dict[str, PredictionScore]]:
    """{transfer name (e.g. 'rl_delta'): {measure: score}}; `transfers` maps a name to (matrix, its rows' training
    tasks)."""
    return {
        t: {m: score_prediction(s, mat, train, names, cfg) for m, s in sims.items()}
        for t, (mat, train) in transfers.items()
    }


def best_measure(scores: dict[str, PredictionScore], include_baselines: bool = False) -> str | None:
    """The measure with the highest Spearman (feature measures only unless `include_baselines`)."""
    cands = {m: s.spearman for m, s in scores.items() if (include_baselines or m not in BASELINES)}
    cands = {m: r for m, r in cands.items() if np.isfinite(r)}
    return max(cands, key=lambda m: cands[m]) if cands else None


# --- figures ---------------------------------------------------------------------------------------------


def plot_scatter(sims: dict, transfer_RE: np.ndarray, train: list[str], names: list[str], scores: dict, path, title=""):
    """One panel per measure: predicted similarity (x) vs measured transfer (y) over the off-diagonal pairs."""
    from featalign.plotting import pyplot

    plt = pyplot()
    pairs = off_diagonal_pairs(train, names)
    fig, axes = plt.subplots(1, len(sims), figsize=(3.2 * len(sims), 3.2), squeeze=False)
    for ax, (m, s) in zip(axes[0], sims.items()):
        ax.scatter([s[i, j] for _, i, j in pairs], [transfer_RE[r, j] for r, _, j in pairs], s=14, alpha=0.7)
        sc = scores[m]
        ax.set_title(
            f"{m}\nrho {sc.spearman:+.2f} [{sc.ci[0]:+.2f}, {sc.ci[1]:+.2f}], p {sc.p_permutation:.2g}", fontsize=8
        )
        ax.set_xlabel("similarity (base model)", fontsize=8)
        ax.axhline(0, color="grey", lw=0.5)
    axes[0][0].set_ylabel("measured transfer", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_matrices(panels: dict[str, tuple[np.ndarray, list[str], list[str]]], path, title: str = ""):
    """Heatmaps side by side: {panel title: (matrix, row labels, column labels)}, each on its own colour scale
    (signed matrices on a diverging one centred on 0; a square similarity matrix without its diagonal)."""
    from featalign.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (name, (mat, rows, cols)) in zip(axes[0], panels.items()):
        mat = np.array(mat, dtype=float)
        if rows == cols:  # a similarity matrix: its diagonal (1 by definition) would swamp the colour scale
            np.fill_diagonal(mat, np.nan)
        if np.nanmin(mat) < 0:  # a signed transfer matrix: diverging colours centred on 0
            lim = float(np.nanmax(np.abs(mat))) or 1.0
            im = ax.imshow(mat, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        else:
            im = ax.imshow(mat, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
