"""RL-success features: latents that carry RL's out-of-domain wins (the feature-level study; docs/analysis.md).

On each out-of-domain task, take the samples the base model fails and the RL model solves; score
each latent by Score_k = mean over those samples of f_k(RL activations) - f_k(base activations);
keep the latents above `frac` (default 0.2) of the task's maximum score; intersect across tasks.
The same analysis on random sample subsets (any correctness) is the null, and a bootstrap over the
success samples gives intervals for the set size and each feature's selection frequency.

Per-model latents. The crosscoder's encoder is shared over all models' activations, so
"f_k(model m)" is the encoding of model m's activations placed in every model slot (each slot
normalised with model m's scale): identical activations give identical latents, and a difference
means model m's representation drives the latent differently.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from featalign.config import JsonConfig

#: where a sample's latents are read: the last prompt token (it predicts the answer's first token), the mean
#: over the prompt tokens, or the reference answer's last token with the answer teacher-forced (it predicts
#: <eos>: where a model decides to stop, which the last prompt token sees only through what it already holds)
POSITIONS = ("last", "all", "answer_end")


class TooFewSamplesError(ValueError):
    """Too few base-fail / RL-success samples for a meaningful score."""


@dataclass
class SuccessConfig(JsonConfig):
    """Settings of the RL-success selection: the crosscoder slots of base and RL, the pooled positions, the
    fraction-of-max threshold, the minimum samples and tasks, and the null / bootstrap repeats."""

    base: str = "base"  # crosscoder model names
    rl: str = "rl"
    positions: str = "last"  # one of POSITIONS: "last" prompt token, "all" prompt tokens' mean, "answer_end"
    frac: float = 0.2  # keep latents with Score_k > frac * max_k Score_k (per task)
    min_samples: int = 8  # per task; fewer base-fail/RL-success samples -> the task is skipped (with its count)
    min_tasks: int = 2  # tasks needed for an intersection
    n_null: int = 50  # random-subset null repeats
    n_boot: int = 100  # bootstrap resamples of the success samples
    seed: int = 0

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if not 0 <= self.frac < 1:
            raise ValueError(f"frac must be in [0, 1), got {self.frac}")


# --- pure selection maths ----------------------------------------------------------------------------


def success_mask(base_correct: np.ndarray, rl_correct: np.ndarray) -> np.ndarray:
    """Samples where the base fails and RL succeeds."""
    b, r = np.asarray(base_correct, bool), np.asarray(rl_correct, bool)
    if b.shape != r.shape:
        raise ValueError(f"base and RL correctness differ in length ({len(b)} vs {len(r)}); score the same samples")
    return ~b & r


def feature_scores(f_rl_SL: Tensor, f_base_SL: Tensor) -> Float[Tensor, " L"]:
    """Score_k = mean_s f_k(RL)_s - f_k(base)_s."""
    return (f_rl_SL.float() - f_base_SL.float()).mean(0)


def select_features(score_L: Tensor, frac: float = 0.2) -> set[int]:
    """Latents with a positive score above frac * max score (empty if no latent scores above 0)."""
    mx = float(score_L.max())
    if mx <= 0:
        return set()
    return set(torch.nonzero(score_L > frac * mx).flatten().tolist())


def pairwise_overlap(sets: dict[str, set[int]]) -> dict[str, dict[str, float]]:
    """Per pair of tasks: overlap coefficient |A∩B| / min(|A|,|B|) and Jaccard |A∩B| / |A∪B|."""
    out = {}
    for a, b in itertools.combinations(sets, 2):
        A, B = sets[a], sets[b]
        inter = len(A & B)
        out[f"{a}|{b}"] = {
            "overlap": inter / max(1, min(len(A), len(B))),
            "jaccard": inter / max(1, len(A | B)),
            "intersection": inter,
        }
    return out


def _intersect(sets: list[set[int]]) -> set[int]:
    return set.intersection(*sets) if sets else set()


@dataclass
class SuccessResult:
    """What the selection found: per-task scores and sets, the intersection and majority sets, pairwise overlaps,
    the random-subset null, the bootstrap over success samples and (optionally) the gradient-score agreement."""

    tasks: list[str]
    n_samples: dict[str, int]  # base-fail / RL-success samples per used task
    skipped: dict[str, str]  # task -> why (with its count)
    scores: dict[str, Tensor]  # task -> Score_L
    per_task: dict[str, list[int]]
    features: list[int]  # the intersection across tasks
    majority: list[int]  # selected in at least half of the tasks
    overlap: dict[str, dict[str, float]]
    null: dict = field(default_factory=dict)
    bootstrap: dict = field(default_factory=dict)
    gradient: dict = field(default_factory=dict)

    def summary(self) -> dict:
        ov = [v["overlap"] for v in self.overlap.values()]
        return {
            "tasks": self.tasks,
            "n_samples": self.n_samples,
            "skipped": self.skipped,
            "per_task_sizes": {t: len(v) for t, v in self.per_task.items()},
            "features": self.features,
            "n_features": len(self.features),
            "majority_features": self.majority,
            "n_majority": len(self.majority),
            "mean_pairwise_overlap": float(np.mean(ov)) if ov else None,
            "pairwise_overlap": self.overlap,
            "null": self.null,
            "bootstrap": self.bootstrap,
            "gradient": self.gradient,
        }


def rl_success_features(
    f_rl: dict[str, Tensor],
    f_base: dict[str, Tensor],
    base_correct: dict[str, np.ndarray],
    rl_correct: dict[str, np.ndarray],
    cfg: SuccessConfig | None = None,
) -> SuccessResult:
    """Select RL-success features from per-sample latents `[S, L]` of each task (all of its eval samples).

    Tasks with fewer than `cfg.min_samples` success samples are skipped and listed with their count;
    if fewer than `cfg.min_tasks` remain, `TooFewSamplesError` says how many each task had.
    """
    cfg = cfg or SuccessConfig()
    counts, skipped, sel = {}, {}, {}
    for t in f_rl:
        m = success_mask(base_correct[t], rl_correct[t])
        if len(m) != len(f_rl[t]) or len(m) != len(f_base[t]):
            raise ValueError(
                f"task {t}: {len(m)} correctness entries but {len(f_rl[t])} / {len(f_base[t])} latent rows"
            )
        n = int(m.sum())
        if n < cfg.min_samples:
            skipped[t] = f"only {n} base-fail/RL-success samples of {len(m)} (need >= {cfg.min_samples})"
        else:
            counts[t], sel[t] = n, torch.from_numpy(np.nonzero(m)[0])
    if len(sel) < cfg.min_tasks:
        detail = "; ".join(f"{t}: {int(success_mask(base_correct[t], rl_correct[t]).sum())}" for t in f_rl)
        raise TooFewSamplesError(
            f"RL-success features need >= {cfg.min_tasks} tasks with >= {cfg.min_samples} base-fail/RL-success "
            f"samples each; got {len(sel)} ({detail}). Evaluate more samples per task, lower min_samples, "
            "or use organisms where RL transfers out of domain"
        )
    tasks = list(sel)
    scores = {t: feature_scores(f_rl[t][sel[t]], f_base[t][sel[t]]) for t in tasks}
    per_task = {t: select_features(scores[t], cfg.frac) for t in tasks}
    inter = _intersect([per_task[t] for t in tasks])
    res = SuccessResult(
        tasks,
        counts,
        skipped,
        scores,
        {t: sorted(v) for t, v in per_task.items()},
        sorted(inter),
        sorted(_majority(list(per_task.values()))),
        pairwise_overlap(per_task),
    )
    rng = np.random.default_rng(cfg.seed)
    res.null = _random_subset_null(f_rl, f_base, tasks, counts, inter, cfg, rng)
    res.bootstrap = _bootstrap(f_rl, f_base, sel, tasks, inter, cfg, rng)
    return res


def _majority(sets: list[set[int]]) -> set[int]:
    """Latents selected in at least half of the sets."""
    need = (len(sets) + 1) // 2
    counts: dict[int, int] = {}
    for s in sets:
        for k in s:
            counts[k] = counts.get(k, 0) + 1
    return {k for k, c in counts.items() if c >= need}


def _random_subset_null(f_rl, f_base, tasks, counts, inter, cfg, rng) -> dict:
    """Same selection on random subsets of each task's samples (same sizes, any correctness)."""
    sizes, overlaps, jac, maj = [], [], [], []
    for _ in range(cfg.n_null):
        sets = {}
        for t in tasks:
            idx = torch.from_numpy(rng.choice(len(f_rl[t]), counts[t], replace=False))
            sets[t] = select_features(feature_scores(f_rl[t][idx], f_base[t][idx]), cfg.frac)
        i = _intersect(list(sets.values()))
        sizes.append(len(i))
        maj.append(len(_majority(list(sets.values()))))
        overlaps.append(np.mean([v["overlap"] for v in pairwise_overlap(sets).values()]))
        jac.append(len(i & inter) / max(1, len(i | inter)))
    q = lambda a: [float(np.quantile(a, 0.025)), float(np.quantile(a, 0.975))]  # noqa: E731
    return {
        "n": cfg.n_null,
        "size_mean": float(np.mean(sizes)),
        "size_95": q(sizes),
        "majority_size_mean": float(np.mean(maj)),
        "majority_size_95": q(maj),
        "mean_overlap_mean": float(np.mean(overlaps)),
        "mean_overlap_95": q(overlaps),
        "jaccard_with_real_mean": float(np.mean(jac)),
    }


def _bootstrap(f_rl, f_base, sel, tasks, inter, cfg, rng) -> dict:
    """Resample each task's success samples: interval of the set size, selection frequency per feature."""
    sizes: list[int] = []
    freq: dict[int, int] = {}  # feature -> bootstrap draws that selected it
    for _ in range(cfg.n_boot):
        sets = []
        for t in tasks:
            idx = sel[t][torch.from_numpy(rng.integers(0, len(sel[t]), len(sel[t])))]
            sets.append(select_features(feature_scores(f_rl[t][idx], f_base[t][idx]), cfg.frac))
        i = _intersect(sets)
        sizes.append(len(i))
        for k in i:
            freq[k] = freq.get(k, 0) + 1
    if not sizes:
        return {}
    return {
        "n": cfg.n_boot,
        "size_95": [float(np.quantile(sizes, 0.025)), float(np.quantile(sizes, 0.975))],
        "size_mean": float(np.mean(sizes)),
        "selection_frequency": {int(k): freq.get(k, 0) / cfg.n_boot for k in sorted(inter)},
        "stable_features": sorted(int(k) for k, v in freq.items() if v / cfg.n_boot >= 0.8),
    }


def agreement(score_L: Tensor, attr_L: Tensor, k: int) -> dict:
    """Spearman rank correlation of two per-latent scores and the Jaccard overlap of their top-k."""
    from scipy.stats import spearmanr

    k = max(1, k)
    a, b = set(score_L.topk(k).indices.tolist()), set(attr_L.topk(k).indices.tolist())
    rho = spearmanr(score_L.numpy(), attr_L.numpy())
    return {
        "spearman": float(rho.statistic),
        "spearman_p": float(rho.pvalue),
        "top_k": k,
        "top_k_jaccard": len(a & b) / len(a | b),
    }


# --- latents from running models ----------------------------------------------------------------------


def prompt_batch(tokenizer, problems, with_answer: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ids [S, T] (with <bos>), a prompt-position mask (no <bos>), and each prompt's last index.
    `with_answer` appends the reference answer and <eos> to each prompt (teacher forcing)."""
    seqs, lens = [], []
    for p in problems:
        ids = tokenizer(p.prompt)["input_ids"]
        lens.append(len(ids))
        if with_answer:
            ids = ids + answer_ids(tokenizer, p) + [tokenizer.eos_token_id]
        seqs.append(ids)
    T = max(map(len, seqs))
    ids_ST = torch.full((len(seqs), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, (s, n) in enumerate(zip(seqs, lens)):
        ids_ST[i, : len(s)] = torch.tensor(s)
        mask[i, 1:n] = True
    return ids_ST, mask, torch.tensor(lens) - 1


def answer_ids(tokenizer, problem) -> list[int]:
    """The reference answer's token ids, as they follow the prompt in `prompt_batch(with_answer=True)`."""
    return tokenizer(problem.answer, add_special_tokens=False)["input_ids"]


def read_index(tokenizer, problems, last_S: Tensor, positions: str) -> Tensor:
    """[S]: the position a sample is read at: its last prompt token, or (`answer_end`) the last token of its
    teacher-forced reference answer (the one that predicts <eos>). Unused by `positions='all'`."""
    if positions != "answer_end":
        return last_S
    return last_S + torch.tensor([len(answer_ids(tokenizer, p)) for p in problems], dtype=last_S.dtype)


def pool_positions(f_STX: Tensor, mask_ST: Tensor, read_S: Tensor, positions: str) -> Tensor:
    """[S, X]: per sample, the mean over prompt positions (`positions='all'`), else the row at `read_S`
    (`read_index`: the last prompt token, or the answer's end)."""
    if positions != "all":
        return f_STX[torch.arange(len(f_STX)), read_S]
    w = mask_ST.float()
    return (f_STX * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)


@torch.no_grad()
def prompt_activations(
    model, tokenizer, problems, hooks, batch: int = 128, positions: str = "last"
) -> Iterator[tuple[Float[Tensor, "S T H D"], Tensor, Tensor]]:
    """Per batch of prompts: (hook activations [S, T, H, D], prompt-position mask [S, T], read index [S]) of one
    model (a `featalign.models.load_model` bridge), on the model's device and dtype. The read index is
    `read_index`'s: with `positions='answer_end'` the reference answers are teacher-forced after the prompts."""
    from featalign.models import capture_models

    with_answer = positions == "answer_end"
    for i in range(0, len(problems), batch):
        chunk = problems[i : i + batch]
        ids, mask, last = prompt_batch(tokenizer, chunk, with_answer=with_answer)
        # right-padded and causal: padding never reaches a real position, so no attention mask is needed
        ids = ids.to(model.cfg.device)
        read = read_index(tokenizer, chunk, last, positions)
        yield capture_models([model], ids, torch.ones_like(ids), hooks)[:, :, 0], mask, read


@torch.no_grad()
def sample_latents(
    cc, model, tokenizer, problems, model_index: int, positions: str = "last", batch: int = 128
) -> Float[Tensor, "S L"]:
    """Per-sample latents of one model (a `featalign.models.load_model` bridge) on prompts, pooled over
    `positions` (one of POSITIONS)."""
    out = []
    for acts, mask, read in prompt_activations(model, tokenizer, problems, cc.cfg.hooks, batch, positions):
        acts = acts.to(cc.W_enc.device, torch.float32)  # the crosscoder's device and dtype, whatever the model's
        S, T = mask.shape
        f = cc.encode_as(acts.reshape(S * T, *acts.shape[2:]), model_index).view(S, T, -1)
        out.append(pool_positions(f, mask, read, positions))
    return torch.cat(out)


def gradient_attribution(
    cc, model, tokenizer, problems, model_index: int, positions: str = "last", batch: int = 64
) -> Float[Tensor, "S L"]:
    """Activation x gradient of log p(correct answer + <eos> | prompt) for each latent, per sample.

    The model's hook activation is replaced by the crosscoder reconstruction plus the (frozen)
    reconstruction error, so the forward pass is unchanged and only the latents carry gradient.
    """
    from featalign.models import edit_hooks, hf_model_of

    if cc.cfg.n_hooks != 1:
        raise ValueError("gradient attribution supports one-hook crosscoders; pass a crosscoder trained on one hook")
    out = []
    for i in range(0, len(problems), batch):
        chunk = problems[i : i + batch]
        ids, mask, last = prompt_batch(tokenizer, chunk, with_answer=True)
        S, T = ids.shape
        ans = torch.zeros(S, T, dtype=torch.bool)
        for s, p in enumerate(chunk):
            n_ans = len(answer_ids(tokenizer, p)) + 1
            ans[s, last[s] + 1 : last[s] + 1 + n_ans] = True
        holder = {}

        def fn(resid):
            # the crosscoder's device and float32, back to the model's after: gradients cross both casts
            x = resid.detach().to(cc.W_enc.device, torch.float32)
            f = cc.encode_as(x.reshape(S * T, 1, -1), model_index).view(S, T, -1).detach().requires_grad_(True)
            recon = cc.decode(f.reshape(S * T, -1))[:, model_index, 0].view(S, T, -1)
            holder["f"] = f
            return (recon + (x - recon.detach())).to(resid.device, resid.dtype)

        with edit_hooks(model, {cc.cfg.hooks[0]: fn}):
            logits = hf_model_of(model)(input_ids=ids.to(model.cfg.device)).logits.float().cpu()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        (logp * ans[:, 1:]).sum().backward()
        f = holder["f"]
        read = read_index(tokenizer, chunk, last, positions)
        out.append(pool_positions((f * f.grad).detach(), mask, read, positions))
        model.zero_grad(set_to_none=True)
    return torch.cat(out)


@dataclass
class TaskData:
    """Per task: eval problems and per-sample greedy correctness of base and RL (same order)."""

    problems: list
    base_correct: np.ndarray
    rl_correct: np.ndarray


def organism_tasks(org, rl_name: str | None = None, tasks: list[str] | None = None) -> dict[str, TaskData]:
    """Out-of-domain tasks of built organisms with the correctness their build recorded (eval/<name>.json)."""
    from featalign.evaluation import eval_problems
    from featalign.io import read_json

    dom = org.config.post_train_domains[0]
    rl_name = rl_name or f"rl-{dom}"
    ev = Path(org.eval_dir)
    for n in ("base", rl_name):
        if not (ev / f"{n}.json").exists():
            raise FileNotFoundError(f"{ev / (n + '.json')} is missing: finish the organisms build (ensure_organisms)")
    b, r = read_json(ev / "base.json"), read_json(ev / f"{rl_name}.json")
    tasks = tasks or [d for d in org.config.pretrain_domains if d not in org.config.post_train_domains]
    out = {}
    for t in tasks:
        probs = eval_problems(t, b["n_per_domain"])
        out[t] = TaskData(probs, np.array(b["correct"][t], bool), np.array(r["correct"][t], bool))
    return out


def success_features_for_models(
    cc,
    base_dir,
    rl_dir,
    tasks: dict[str, TaskData],
    cfg: SuccessConfig | None = None,
    gradient: bool = False,
    progress: bool = True,
    device: str = "cpu",
    dtype: str = "float32",
) -> SuccessResult:
    """Run base and RL on every task's samples, encode, and select RL-success features (+ gradient score).
    Folders are loaded on `device` in `dtype`; the crosscoder stays where it is (activations go to it)."""
    cfg = cfg or SuccessConfig()
    from featalign.models import as_model

    names = tuple(cc.cfg.models)
    for n in (cfg.base, cfg.rl):
        if n not in names:
            raise ValueError(f"the crosscoder's models are {names}; it has no {n!r} (set SuccessConfig.base/rl)")
    bi, ri = names.index(cfg.base), names.index(cfg.rl)
    bm, rm = as_model(base_dir, device=device, dtype=dtype), as_model(rl_dir, device=device, dtype=dtype)
    tok = bm.tokenizer
    for name, mdl in ((cfg.base, bm), (cfg.rl, rm)):
        if mdl.cfg.d_model != cc.cfg.d_model:
            raise ValueError(
                f"model {name} has width {mdl.cfg.d_model} but the crosscoder expects "
                f"d_model={cc.cfg.d_model}: pass the models it was trained on"
            )
    f_rl, f_base = {}, {}
    for t, td in tqdm(tasks.items(), desc="success features: encode tasks", disable=not progress):
        f_rl[t] = sample_latents(cc, rm, tok, td.problems, ri, cfg.positions)
        f_base[t] = sample_latents(cc, bm, tok, td.problems, bi, cfg.positions)
    res = rl_success_features(
        f_rl, f_base, {t: d.base_correct for t, d in tasks.items()}, {t: d.rl_correct for t, d in tasks.items()}, cfg
    )
    if gradient:
        agree = {}
        for t in res.tasks:
            m = success_mask(tasks[t].base_correct, tasks[t].rl_correct)
            probs = [p for p, keep in zip(tasks[t].problems, m) if keep]
            attr = gradient_attribution(cc, rm, tok, probs, ri, cfg.positions).mean(0)
            agree[t] = agreement(res.scores[t], attr, len(res.per_task[t]))
        res.gradient = agree
    return res
