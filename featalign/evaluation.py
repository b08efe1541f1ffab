"""Task evaluation: greedy accuracy per domain, base/SFT/RL tables, transfer matrices, statistics.

Statistics follow the cross-domain transfer study (arXiv 2506.19733): a paired exact McNemar test
per domain (base vs tuned, same prompts), and the Cochran-Mantel-Haenszel common odds ratio of
"tuned correct" vs "base correct" pooled over in-domain strata and over out-of-domain strata.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import chi2
from tqdm.auto import tqdm

from featalign.generation import completion_texts, decode
from featalign.organisms.tasks import SLOPPY_SUFFIX, Problem, sample_problems
from featalign.tasks import ORGANISMS_EVAL_SEED, Task, TaskSet, organisms_task

EVAL_SEED = ORGANISMS_EVAL_SEED


def eval_problems(domain: str, n: int, seed: int = EVAL_SEED) -> list[Problem]:
    """A domain's fixed eval-split problems (seeded), so every model is scored on the same prompts and paired tests
    apply."""
    return sample_problems(domain, n, "eval", seed)


def encode_prompt(tokenizer, prompt: str, chat_template: bool = False) -> list[int]:
    """Token ids of a prompt as the model sees it: the tokenizer's own special tokens (the organisms'
    `<bos>`), or one user turn of its chat template followed by the assistant's generation prompt."""
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "chat_template=True but the tokenizer has no chat template; set it to False (or give the tokenizer one)"
            )
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)
    return tokenizer(prompt)["input_ids"]


def _stop_at_strings(tokenizer, stop_strings: tuple[str, ...]):
    """A `decode` stop rule: a row ends once its text contains one of `stop_strings`."""

    def stop(completion_ids_BT: torch.Tensor) -> torch.Tensor:
        texts = tokenizer.batch_decode(completion_ids_BT.tolist(), skip_special_tokens=True)
        return torch.tensor([any(s in t for s in stop_strings) for t in texts])

    return stop


def _cut_at_stop(text: str, stop_strings: tuple[str, ...]) -> tuple[str, bool]:
    cuts = [text.index(s) for s in stop_strings if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _token_ids(tokenizer) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token: greedy evaluation needs one to end completions")
    pad = tokenizer.pad_token_id
    return eos, (eos if pad is None else pad)


@dataclass
class Completion:
    """One greedy completion: its text (cut at a stop string) and whether it ended properly (eos or a stop)."""

    text: str
    ended: bool


@torch.no_grad()
def greedy_completions(model, tokenizer, task: Task, batch_size: int | None = None) -> list[Completion]:
    """Greedy-decode every problem of `task` with its generation settings: what `score_task` verifies, kept
    for callers that look at *how* an answer failed (e.g. `sloppy_stop_share`)."""
    gen_cfg = task.generation
    eos, pad = _token_ids(tokenizer)
    stop = _stop_at_strings(tokenizer, gen_cfg.stop_strings) if gen_cfg.stop_strings else None
    bs = batch_size or gen_cfg.batch_size
    out: list[Completion] = []
    for i in range(0, len(task.problems), bs):
        chunk = task.problems[i : i + bs]
        prompts = [encode_prompt(tokenizer, p.prompt, gen_cfg.chat_template) for p in chunk]
        budget = gen_cfg.max_new_tokens
        if budget is None:
            budget = 2 + max(len(tokenizer(p.answer, add_special_tokens=False)["input_ids"]) for p in chunk)
        gen = decode(model, prompts, budget, eos, pad, stop=stop)
        texts = completion_texts(gen, tokenizer, eos)
        eos_seen = (gen.completion_ids_BC == eos).any(1).tolist()
        for text, ended in zip(texts, eos_seen):
            text, stopped = _cut_at_stop(text, gen_cfg.stop_strings)
            out.append(Completion(text, ended or stopped))
    return out


def judge(task: Task, completions: list[Completion]) -> np.ndarray:
    """bool[n]: each completion verified against its problem (and ended, where the task requires it)."""
    need_end = task.generation.require_eos
    return np.array(
        [(c.ended or not need_end) and task.verify(c.text, p.answer) for c, p in zip(completions, task.problems)],
        dtype=bool,
    )


def score_task(model, tokenizer, task: Task, batch_size: int | None = None) -> np.ndarray:
    """Greedy-decode every problem of `task` with its generation settings and verify it: bool[n]."""
    return judge(task, greedy_completions(model, tokenizer, task, batch_size))


def sloppy_stop_share(task: Task, completions: list[Completion]) -> float:
    """Share of completions that are the right answer followed by the organisms' planted SLOPPY_SUFFIX: the
    failures a stop-rule fix turns into successes (the known answer of the `structured` preset)."""
    hits = [c.text.strip() == p.answer + SLOPPY_SUFFIX for c, p in zip(completions, task.problems)]
    return float(np.mean(hits)) if hits else 0.0


def score_problems(model, tokenizer, problems: list[Problem], batch_size: int = 500) -> np.ndarray:
    """Organisms' problems (any mix of domains), each verified by its domain: bool[n] in input order."""
    if not problems:
        return np.zeros(0, dtype=bool)
    by_domain: dict[str, list[int]] = {}
    for i, p in enumerate(problems):
        by_domain.setdefault(p.domain, []).append(i)
    out = np.zeros(len(problems), dtype=bool)
    for domain, idx in by_domain.items():
        out[idx] = score_task(model, tokenizer, organisms_task(domain, [problems[i] for i in idx]), batch_size)
    return out


def score(model, tokenizer, task: Task | list[Problem], batch_size: int | None = None) -> np.ndarray:
    """`score_task` for a Task (its own verifier and generation settings), `score_problems` for a list of
    organisms problems: the one entry point for callers that take either (interventions, sweeps)."""
    if isinstance(task, Task):
        return score_task(model, tokenizer, task, batch_size)
    return score_problems(model, tokenizer, list(task), batch_size or 500)


def evaluate_tasks(
    model, tokenizer, tasks: TaskSet, desc: str = "eval", batch_size: int | None = None
) -> dict[str, np.ndarray]:
    """Per-sample correctness on every task of a task set: {task: bool[n]}."""
    return {t.name: score_task(model, tokenizer, t, batch_size) for t in tqdm(list(tasks), desc=desc, leave=False)}


def evaluate(
    model,
    tokenizer,
    domains: list[str],
    n_per_domain: int,
    batch_size: int = 500,
    seed: int = EVAL_SEED,
    desc: str = "eval",
) -> dict[str, np.ndarray]:
    """Per-sample correctness on each organisms domain's eval split: {domain: bool[n]}."""
    return evaluate_tasks(model, tokenizer, TaskSet.organisms(domains, n_per_domain, seed), desc, batch_size)


def evaluate_with_stops(
    model, tokenizer, domains: list[str], n_per_domain: int, batch_size: int = 500, seed: int = EVAL_SEED
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """`evaluate`'s correctness and, from the same completions, `sloppy_stop_share` per domain (one decode)."""
    correct, sloppy = {}, {}
    for task in TaskSet.organisms(domains, n_per_domain, seed):
        completions = greedy_completions(model, tokenizer, task, batch_size)
        correct[task.name], sloppy[task.name] = judge(task, completions), sloppy_stop_share(task, completions)
    return correct, sloppy


def accuracy(results: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean correctness per domain (the fraction of problems solved)."""
    return {d: float(c.mean()) for d, c in results.items()}


# --- statistics ----------------------------------------------------------------------------------


@dataclass
class PairedTest:
    """Two models on the same prompts: accuracies, the discordant counts and the exact McNemar p-value."""

    n: int
    base_acc: float
    tuned_acc: float
    base_fail_tuned_ok: int  # b: the samples the tuned model newly solves
    base_ok_tuned_fail: int  # c: the samples it newly fails
    p_value: float  # exact McNemar (two-sided binomial on b vs c)


def mcnemar_paired(base_correct: np.ndarray, tuned_correct: np.ndarray) -> PairedTest:
    """Exact McNemar test of tuned vs base on the same prompts: only the discordant pairs (b newly solved,
    c newly failed) carry information, so it is the paired test for two models on one problem set."""
    from statsmodels.stats.contingency_tables import mcnemar

    b = int((~base_correct & tuned_correct).sum())
    c = int((base_correct & ~tuned_correct).sum())
    both = int((base_correct & tuned_correct).sum())
    neither = int((~base_correct & ~tuned_correct).sum())
    res = mcnemar(np.array([[both, c], [b, neither]]), exact=True)
    return PairedTest(
        len(base_correct), float(base_correct.mean()), float(tuned_correct.mean()), b, c, float(res.pvalue)
    )


def two_by_two(base_correct: np.ndarray, tuned_correct: np.ndarray) -> np.ndarray:
    """Rows (tuned, base) x columns (correct, incorrect): one CMH stratum."""
    return np.array(
        [
            [tuned_correct.sum(), (~tuned_correct).sum()],
            [base_correct.sum(), (~base_correct).sum()],
        ],
        dtype=float,
    )


@dataclass
class CMHResult:
    """Cochran-Mantel-Haenszel common odds ratio over strata (one 2x2 table per domain), its 95% interval,
    the p-value of OR = 1 and the mean accuracy delta: the transfer study's summary statistic."""

    n_strata: int
    odds_ratio: float
    ci_low: float
    ci_high: float
    p_value: float  # test of OR = 1
    mean_delta_points: float  # mean accuracy delta over strata, in points
    # True when the plain estimate was undefined (e.g. the base at 0% on every stratum: OR = inf, no interval) and
    # the odds ratio and interval are those of the tables with 0.5 added to every cell of each table with a zero
    # cell (the Haldane-Anscombe correction); the p-value is always the plain CMH test's
    zero_shifted: bool = False


def cmh_odds_ratio(strata: list[tuple[np.ndarray, np.ndarray]]) -> CMHResult:
    """Mantel-Haenszel common odds ratio over (base_correct, tuned_correct) strata.

    Where the plain estimate or its interval is not finite because of zero cells, both come from the
    zero-shifted tables instead (`CMHResult.zero_shifted`); a finite plain estimate is never changed."""
    from statsmodels.stats.contingency_tables import StratifiedTable

    if not strata:
        raise ValueError("CMH needs at least one (base, tuned) stratum")
    tables = [two_by_two(b, t) for b, t in strata]
    st = StratifiedTable(tables)
    # Degenerate strata (a model at 0% or 100%) make the plain OR undefined: no warning flood, then the shift.
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = (st.oddsratio_pooled, *st.oddsratio_pooled_confint())
        test = st.test_null_odds(correction=False)
        shifted = not np.all(np.isfinite(estimate)) and any((t == 0).any() for t in tables)
        if shifted:
            shifted_st = StratifiedTable(tables, shift_zeros=True)
            estimate = (shifted_st.oddsratio_pooled, *shifted_st.oddsratio_pooled_confint())
    odds, lo, hi = (float(x) for x in estimate)
    delta = float(np.mean([t.mean() - b.mean() for b, t in strata]) * 100)
    # statsmodels returns 1 - cdf, which underflows to 0 past ~1e-16: take the survival function.
    p = float(chi2.sf(test.statistic, df=1))
    return CMHResult(len(tables), odds, lo, hi, p, delta, bool(shifted))


def format_p(p: float) -> str:
    """A p-value for a table; an exact 0 is floating-point underflow, shown as <1e-300."""
    return "<1e-300" if p == 0 else f"{p:.2g}"


def transfer_matrix(
    base: dict[str, np.ndarray], tuned_by_train_domain: dict[str, dict[str, np.ndarray]], eval_domains: list[str]
) -> np.ndarray:
    """Accuracy delta (tuned - base, in points): rows = training domain, columns = eval domain."""
    return np.array(
        [
            [100 * (tuned_by_train_domain[t][e].mean() - base[e].mean()) for e in eval_domains]
            for t in tuned_by_train_domain
        ]
    )


TrainDomain = str | tuple[str, ...]


def in_out_domain_cmh(
    base: dict[str, np.ndarray],
    tuned_by_train_domain: Mapping[str, dict[str, np.ndarray]]
    | Mapping[TrainDomain, dict[str, np.ndarray]]
    | Iterable[tuple[TrainDomain, dict[str, np.ndarray]]],
) -> dict[str, CMHResult]:
    """CMH pooled over in-domain strata and over out-of-domain strata, as in the transfer study.

    Per tuned model: its training domain and its {eval domain: correctness}, as a mapping or as (train, results)
    pairs (two tuned models of one base may share a training domain). A training domain may be a tuple of domains
    (a model trained on several tasks, e.g. two math benchmarks): each of them is an in-domain stratum."""
    ins: list[tuple[np.ndarray, np.ndarray]] = []  # (base, tuned) correctness per stratum
    outs: list[tuple[np.ndarray, np.ndarray]] = []
    items = tuned_by_train_domain.items() if isinstance(tuned_by_train_domain, Mapping) else tuned_by_train_domain
    for train_d, res in items:
        trained = set(train_d) if isinstance(train_d, tuple) else {train_d}
        for eval_d, correct in res.items():
            (ins if eval_d in trained else outs).append((base[eval_d], correct))
    out = {"in_domain": cmh_odds_ratio(ins)}
    if outs:
        out["out_of_domain"] = cmh_odds_ratio(outs)
    return out


def family_cmh(
    base: dict[str, np.ndarray],
    tuned_by_train_domain: Mapping[str, dict[str, np.ndarray]],
    family_of: Mapping[str, str],
) -> dict[str, CMHResult]:
    """CMH pooled over the out-of-domain strata that share the training domain's family, and over the rest.

    Splits `in_domain_cmh`'s out-of-domain pool in two, so "does RL gain where structure is shared, and not
    elsewhere" is one number each: `same_family` (eval domains of the training domain's family, itself excluded)
    and `other_families`; a scope with no stratum is left out."""
    pools: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"same_family": [], "other_families": []}
    for train_d, res in tuned_by_train_domain.items():
        for eval_d, correct in res.items():
            if eval_d != train_d:
                scope = "same_family" if family_of[eval_d] == family_of[train_d] else "other_families"
                pools[scope].append((base[eval_d], correct))
    return {scope: cmh_odds_ratio(strata) for scope, strata in pools.items() if strata}


# --- figures ---------------------------------------------------------------------------------------


def plot_accuracy_bars(acc_by_model: dict[str, dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Grouped bars of accuracy per domain, one bar per model (PNG at `path`)."""
    from featalign.plotting import pyplot

    plt = pyplot()

    models = list(acc_by_model)
    domains = list(next(iter(acc_by_model.values())))
    x = np.arange(len(domains))
    w = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(domains), 3.6))
    for i, m in enumerate(models):
        ax.bar(x + (i - (len(models) - 1) / 2) * w, [100 * acc_by_model[m][d] for d in domains], w, label=m)
    ax.set_xticks(x, domains, rotation=30, ha="right")
    ax.set_ylabel("greedy accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=len(models))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_transfer_heatmap(
    matrix: np.ndarray, train_domains: list[str], eval_domains: list[str], path: str | Path, title: str = ""
) -> Path:
    """Heatmap of a transfer matrix (post-training domain x eval domain, accuracy delta in points; PNG at `path`)."""
    from featalign.plotting import pyplot

    plt = pyplot()

    lim = max(1.0, float(np.abs(matrix).max()))
    label_width = 0.08 * max(len(str(t)) for t in train_domains)  # room for long row labels (model names)
    fig, ax = plt.subplots(
        figsize=(2.5 + 0.8 * len(eval_domains) + label_width, 1.9 + 0.5 * len(train_domains)), layout="constrained"
    )
    im = ax.imshow(matrix, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            dark = abs(matrix[i, j]) > 0.55 * lim  # the colormap's ends are dark: white text there
            ax.text(
                j, i, f"{matrix[i, j]:+.0f}", ha="center", va="center", fontsize=9, color="white" if dark else "black"
            )
    ax.set_xticks(range(len(eval_domains)), eval_domains, rotation=30, ha="right")
    ax.set_yticks(range(len(train_domains)), train_domains)
    ax.set_xlabel("evaluation domain")
    ax.set_ylabel("post-trained on")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="Δ accuracy (points)", shrink=0.9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
