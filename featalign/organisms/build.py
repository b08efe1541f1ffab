"""Build the model organisms: base (pretrained on every domain) -> SFT and RL on one domain -> eval.

Layout of an organisms folder:

    config.json                the OrganismConfig (a different config in the same folder is refused)
    base/                      HF model folder (weights, config, tokenizer, featalign.json)
    sft-<domain>/ckpt-1..5     SFT checkpoints every 1/5 epoch; ckpt-5 is the final SFT model
    rl-<domain>/ckpt-1..5      GRPO checkpoints likewise
    eval/                      per-sample correctness, summary.json, summary.md, figures
    _state/                    resumable training states (deleted stages never need them again)

Every stage is resumable: HF folders are written atomically (a folder without a complete
featalign.json is rebuilt) and training states are saved at every checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from tqdm.auto import tqdm

from featalign.evaluation import (
    accuracy,
    cmh_odds_ratio,
    evaluate_with_stops,
    family_cmh,
    format_p,
    in_out_domain_cmh,
    mcnemar_paired,
    plot_accuracy_bars,
    plot_transfer_heatmap,
    transfer_matrix,
)
from featalign.io import atomic_write_json, atomic_write_text, provenance, read_json
from featalign.organisms.config import OrganismConfig, default_organisms_dir, preset_config
from featalign.organisms.grpo import grpo_loss, grpo_max_new_tokens
from featalign.organisms.model import is_complete, load_organism, new_model, save_organism
from featalign.organisms.tasks import Problem, get_domain, sample_mixture, sample_problems
from featalign.organisms.tokenizer import build_tokenizer
from featalign.organisms.train import (
    answer_loss,
    backward_of,
    encode_supervised,
    flat_grad,
    pack_supervised,
    run_steps,
    set_flat_grad,
    shard_rows,
    torch_threads,
)

POST_TRAIN_KINDS = ("sft", "rl")
T = TypeVar("T")
TRAIN_LOG = "train_log.jsonl"


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha1("|".join(map(str, parts)).encode()).digest()[:8], "big") % 2**63


@dataclass
class Organisms:
    """Paths to a built organisms folder; `model_dir(kind, domain, ckpt)` names any model."""

    root: Path
    config: OrganismConfig

    @classmethod
    def open(cls, root: str | Path) -> Organisms:
        """Open an organisms folder read-only, with the config it was built with (any preset)."""
        root = Path(root)
        if not (root / "config.json").exists():
            raise FileNotFoundError(
                f"{root} is not an organisms folder (no config.json); build one with "
                "`python -m featalign.organisms build --out DIR`"
            )
        return cls(root, OrganismConfig.load(root / "config.json"))

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    def run_dir(self, kind: str, domain: str) -> Path:
        if kind not in POST_TRAIN_KINDS:
            raise ValueError(f"kind must be one of {POST_TRAIN_KINDS}, got {kind!r}")
        return self.root / f"{kind}-{domain}"

    def model_dir(self, kind: str, domain: str | None = None, ckpt: int | None = None) -> Path:
        """`kind` 'base', 'sft' or 'rl'; `ckpt` 1..n_checkpoints (default: the final one)."""
        if kind == "base":
            return self.base_dir
        domain = domain or self.config.post_train_domains[0]
        k = self.config.n_checkpoints if ckpt is None else ckpt
        if not 1 <= k <= self.config.n_checkpoints:
            raise ValueError(f"checkpoint {k} out of range 1..{self.config.n_checkpoints}")
        return self.run_dir(kind, domain) / f"ckpt-{k}"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def summary(self) -> dict:
        return read_json(self.eval_dir / "summary.json")

    def is_complete(self) -> bool:
        """Every model folder complete and the evaluation summary written."""
        dirs = [self.base_dir] + [
            self.model_dir(kind, d, k)
            for d in self.config.post_train_domains
            for kind in POST_TRAIN_KINDS
            for k in range(1, self.config.n_checkpoints + 1)
        ]
        return all(is_complete(d) for d in dirs) and (self.eval_dir / "summary.json").exists()

    def default_trio(self) -> dict[str, Path]:
        """{'base', 'rl', 'sft'} -> model folders for the first post-training domain."""
        return {"base": self.base_dir, "rl": self.model_dir("rl"), "sft": self.model_dir("sft")}


# --- config handling -------------------------------------------------------------------------------


def _check_or_write_config(root: Path, cfg: OrganismConfig) -> OrganismConfig:
    """Refuse a folder built with another config; allow adding post-training domains."""
    path = root / "config.json"
    if path.exists():
        old = OrganismConfig.load(path)
        diff = {k: v for k, v in old.diff(cfg).items() if k != "post_train_domains"}
        if diff:
            lines = ", ".join(f"{k}: folder has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{root} holds organisms built with a different config ({lines}). "
                "Use another --out folder, or delete this one to rebuild."
            )
        merged = tuple(dict.fromkeys(old.post_train_domains + cfg.post_train_domains))
        cfg = OrganismConfig.from_dict({**cfg.to_dict(), "post_train_domains": merged})
    root.mkdir(parents=True, exist_ok=True)
    cfg.save(path)
    atomic_write_json(root / "provenance.json", provenance())
    return cfg


# --- stages ----------------------------------------------------------------------------------------


def _pretrain(org: Organisms, tokenizer, pool: ProcessPoolExecutor | None, workers: int) -> None:
    cfg = org.config
    if is_complete(org.base_dir):
        return
    model = new_model(cfg, tokenizer)
    n = cfg.pretrain_shards

    def grad_fn(step: int) -> tuple[float, dict]:
        params = parameters_to_vector(model.parameters()).detach().numpy()
        rows = pretrain_rows(cfg, step, tokenizer)
        n_targets = float(rows[1][:, 1:].sum())
        args = {k: (cfg, [t.numpy() for t in shard_rows(rows, k, n)], n_targets, params) for k in range(n)}
        done = run_shards(shard_gradient, args, pool, workers)
        grad = torch.from_numpy(done[0][1])
        for k in range(1, n):  # summed in shard order: the same bits however the shards were spread
            grad = grad + torch.from_numpy(done[k][1])
        set_flat_grad(model, grad)
        return sum(done[k][0] for k in range(n)), {}

    every = max(1, cfg.pretrain_steps // 6)
    run_steps(
        model,
        grad_fn,
        cfg.pretrain_steps,
        cfg.pretrain_lr,
        cfg.pretrain_warmup,
        state_path=org.root / "_state" / "base.pt",
        save_at=lambda s: s % every == 0 or s == cfg.pretrain_steps,
        desc="pretrain base",
    )
    save_organism(model, org.base_dir, {"role": "base", "config": cfg.to_dict()}, tokenizer)


_SHARD_MODEL: dict[str, torch.nn.Module] = {}  # per process: the model copy that computes shard gradients
_REFERENCE: dict[str, torch.nn.Module] = {}  # per process: the frozen base of RL's KL term


def _shard_model(cfg: OrganismConfig) -> torch.nn.Module:
    key = cfg.to_json()
    if key not in _SHARD_MODEL:
        _SHARD_MODEL.clear()
        _SHARD_MODEL[key] = new_model(cfg, build_tokenizer()).train()
    return _SHARD_MODEL[key]


def run_shards(
    fn: Callable[..., T], args: dict[int, tuple], pool: ProcessPoolExecutor | None, workers: int
) -> dict[int, T]:
    """{k: fn(*args[k])} for every shard k: on a worker when k % workers, else in this process. `fn` is a pure
    function of its arguments, so where a shard ran never changes its result."""
    remote = {k: pool.submit(fn, *a) for k, a in args.items() if pool is not None and k % workers}
    done = {k: fn(*a) for k, a in args.items() if k not in remote}
    done.update({k: f.result() for k, f in remote.items()})
    return done


def pretrain_rows(cfg: OrganismConfig, step: int, tokenizer) -> tuple[torch.Tensor, ...]:
    """The encoded pretraining batch of `step`: packed (ids, mask, position ids) or padded (ids, mask)."""
    problems = pretrain_batch(cfg, step)
    if cfg.pretrain_packing:
        return pack_supervised(problems, tokenizer, cfg.max_len)
    return encode_supervised(problems, tokenizer)


def shard_gradient(
    cfg: OrganismConfig, rows: list[np.ndarray], n_targets: float, params: np.ndarray
) -> tuple[float, np.ndarray]:
    """Loss and flat gradient of one shard's `rows` (ids, mask[, position ids]) at the weights `params`.

    The loss is the shard's sum over answer tokens divided by the whole batch's count `n_targets`, so the
    shards' gradients sum to the batch's. A pure function of its arguments: it runs in this process or on
    a worker, and the build's bits depend only on `cfg.pretrain_shards`, not on where the shards ran."""
    model = _shard_model(cfg)
    with torch_threads(cfg.torch_threads):
        vector_to_parameters(torch.from_numpy(params), model.parameters())
        ids, mask, *pos = (torch.from_numpy(a) for a in rows)
        loss = answer_loss(model, ids, mask, pos[0] if pos else None, n_targets=n_targets)
        model.zero_grad(set_to_none=True)
        loss.backward()
        return float(loss.detach()), flat_grad(model).numpy()


def rollout_seed(cfg: OrganismConfig, domain: str, step: int, shard: int) -> int:
    """The sampling seed of one RL step's rollout shard (one shard: the seed builds used before shards)."""
    return (
        _seed(cfg.seed, "rollout", domain, step)
        if cfg.rl_shards == 1
        else _seed(cfg.seed, "rollout", domain, step, shard)
    )


def rl_shard_gradient(
    cfg: OrganismConfig,
    domain: str,
    problems: list[Problem],
    step: int,
    shard: int,
    max_new_tokens: int,
    params: np.ndarray,
    base_dir: str,
) -> tuple[float, dict, np.ndarray]:
    """GRPO loss, rollout statistics and flat gradient of shard `shard` of RL step `step` (its share of the
    step's prompts, whole groups) at the weights `params`.

    RL is the longest stage after pretraining, and one process ran it while the other core finished SFT and
    the evaluations and then idled: in shards, a step's rollouts and backward run side by side. Each shard
    samples from its own seeded generator, so like `shard_gradient` it is a pure function of its arguments,
    and the build's bits depend on `cfg.rl_shards`, not on where the shards ran."""
    model = _shard_model(cfg)
    if cfg.rl_kl_beta > 0 and base_dir not in _REFERENCE:
        _REFERENCE.clear()
        _REFERENCE[base_dir] = load_organism(base_dir)[0]
    with torch_threads(cfg.torch_threads):
        vector_to_parameters(torch.from_numpy(params), model.parameters())
        loss, info = grpo_loss(
            model,
            problems,
            build_tokenizer(),
            cfg.rl_group_size,
            cfg.rl_temperature,
            max_new_tokens,
            torch.Generator().manual_seed(rollout_seed(cfg, domain, step, shard)),
            ref_model=_REFERENCE.get(base_dir),
            beta=cfg.rl_kl_beta,
        )
        model.zero_grad(set_to_none=True)
        loss.backward()
        return float(loss.detach()), info, flat_grad(model).numpy()


def combine_rl_shards(done: dict[int, tuple[float, dict, np.ndarray]]) -> tuple[float, dict, torch.Tensor]:
    """One step's loss, statistics and gradient from its shards': each shard's token mean weighted by its share
    of the step's tokens, so the result is the token mean over the whole step (with one shard, itself exactly:
    its weight is 1.0)."""
    n = len(done)
    tokens = [done[k][1]["tokens"] for k in range(n)]
    total = max(sum(tokens), 1.0)
    grad = torch.from_numpy(done[0][2]) * (tokens[0] / total)
    for k in range(1, n):  # in shard order: the same bits however the shards were spread
        grad = grad + torch.from_numpy(done[k][2]) * (tokens[k] / total)
    loss = sum(done[k][0] * tokens[k] for k in range(n)) / total
    info = {key: sum(done[k][1][key] for k in range(n)) / n for key in done[0][1] if key != "tokens"}
    return loss, info, grad


def pretrain_batch(cfg: OrganismConfig, step: int) -> list[Problem]:
    """The mixture batch of `step`: a pure function of (config, step).

    Batches mix all domains and lengths. Length-bucketed batches (tried: 8 batches sorted by length
    and split) cut padding from ~60% to ~10% of tokens but made batches domain-homogeneous, and the
    base came out far weaker at the same step count (add 10% vs 17%, count 32% vs 89%).
    """
    return sample_mixture(list(cfg.pretrain_domains), cfg.pretrain_batch, "train", _seed(cfg.seed, "pretrain", step))


def post_train_prompts(cfg: OrganismConfig, domain: str) -> list[Problem]:
    """The identical prompt set that SFT and RL both train on."""
    return sample_problems(domain, cfg.post_train_prompts, "train", _seed(cfg.seed, "post-train", domain))


def _epoch_batches(n_items: int, batch: int, epochs: int, seed: int) -> list[list[int]]:
    out = []
    for e in range(epochs):
        perm = list(range(n_items))
        random.Random(_seed(seed, e)).shuffle(perm)
        out += [perm[i : i + batch] for i in range(0, n_items, batch)]
    return out


def _checkpoint_steps(total: int, n: int) -> list[int]:
    return sorted({max(1, round(total * k / n)) for k in range(1, n + 1)})


def _post_train(
    org: Organisms, kind: str, domain: str, tokenizer, pool: ProcessPoolExecutor | None = None, workers: int = 1
) -> None:
    cfg = org.config
    run = org.run_dir(kind, domain)
    if (
        all(is_complete(org.model_dir(kind, domain, k)) for k in range(1, cfg.n_checkpoints + 1))
        and (run / TRAIN_LOG).exists()
    ):
        return
    model, _ = load_organism(org.base_dir)
    prompts = post_train_prompts(cfg, domain)
    bsz = cfg.sft_batch if kind == "sft" else cfg.rl_prompts_per_step
    epochs = cfg.sft_epochs if kind == "sft" else cfg.rl_epochs
    batches = _epoch_batches(len(prompts), bsz, epochs, _seed(cfg.seed, kind, domain))
    ckpts = _checkpoint_steps(len(batches), cfg.n_checkpoints)
    if len(ckpts) != cfg.n_checkpoints:
        raise ValueError(
            f"{kind} on {domain}: {len(batches)} steps cannot hold {cfg.n_checkpoints} checkpoints; "
            "raise post_train_prompts or lower the batch size"
        )
    if kind == "sft":

        def loss_fn(step: int):
            return answer_loss(model, *encode_supervised([prompts[i] for i in batches[step]], tokenizer)), {}

        lr = cfg.sft_lr
    else:
        max_new = grpo_max_new_tokens(prompts, tokenizer)
        n = cfg.rl_shards

        def rl_grad_fn(step: int) -> tuple[float, dict]:
            params = parameters_to_vector(model.parameters()).detach().numpy()
            batch = [prompts[i] for i in batches[step]]
            args = {k: (cfg, domain, batch[k::n], step, k, max_new, params, str(org.base_dir)) for k in range(n)}
            loss, info, grad = combine_rl_shards(run_shards(rl_shard_gradient, args, pool, workers))
            set_flat_grad(model, grad)
            return loss, info

        lr = cfg.rl_lr

    def on_save(step: int) -> None:
        k = ckpts.index(step) + 1
        meta = {
            "role": kind,
            "domain": domain,
            "checkpoint": k,
            "step": step,
            "epoch": step / len(batches) * epochs,
            "config": cfg.to_dict(),
        }
        save_organism(model, org.model_dir(kind, domain, k), meta, tokenizer)

    logs = run_steps(
        model,
        backward_of(model, loss_fn) if kind == "sft" else rl_grad_fn,
        len(batches),
        lr,
        warmup=max(1, len(batches) // 20),
        state_path=org.root / "_state" / f"{kind}-{domain}.pt",
        save_at=lambda s: s in ckpts,
        on_save=on_save,
        desc=f"{kind} {domain}",
    )
    # every step's row (the state carries the rows of the steps before a resume), written whole
    atomic_write_text(run / TRAIN_LOG, "".join(json.dumps(row) + "\n" for row in logs))


def _eval_names(org: Organisms) -> dict[str, Path]:
    """Every model the build evaluates: 'base', then '<kind>-<domain>' (final checkpoints)."""
    names = {"base": org.base_dir}
    for d in org.config.post_train_domains:
        for kind in POST_TRAIN_KINDS:
            names[f"{kind}-{d}"] = org.model_dir(kind, d)
    return names


def _evaluate_model(org: Organisms, name: str) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One model's per-sample correctness and right-answer-then-'.' share on every domain, from
    `eval/<name>.json` when it is there (an older file without the share is re-scored once)."""
    cfg = org.config
    domains = list(cfg.pretrain_domains)
    f = org.eval_dir / f"{name}.json"
    saved = read_json(f) if f.exists() else {}
    if saved.get("n_per_domain") == cfg.eval_samples and "sloppy_stop" in saved:
        # JSON keys are sorted: restore the config's domain order
        return (
            {d: np.array(saved["correct"][d], bool) for d in domains},
            {d: saved["sloppy_stop"][d] for d in domains},
        )
    model, tok = load_organism(_eval_names(org)[name])
    res, sloppy = evaluate_with_stops(model, tok, domains, cfg.eval_samples, cfg.eval_batch)
    correct = {d: c.astype(int).tolist() for d, c in res.items()}
    atomic_write_json(f, {"n_per_domain": cfg.eval_samples, "correct": correct, "sloppy_stop": sloppy})
    return res, sloppy


def _evaluate_all(org: Organisms) -> dict:
    results: dict[str, dict[str, np.ndarray]] = {}
    sloppy: dict[str, dict[str, float]] = {}
    for name in tqdm(_eval_names(org), desc="evaluate organisms", leave=False):
        results[name], sloppy[name] = _evaluate_model(org, name)
    return summarise(org, results, sloppy)


def summarise(
    org: Organisms, results: dict[str, dict[str, np.ndarray]], sloppy_stop: dict[str, dict[str, float]] | None = None
) -> dict:
    """Everything the build's evaluation found, as JSON: accuracy per model and domain, exact McNemar per
    domain, transfer matrices and CMH odds ratios in domain, out of domain, and out of domain split into the
    training domain's family and the other families (written to `eval/summary.json`, with
    `summary.md` and the accuracy / transfer figures)."""
    cfg = org.config
    domains = list(cfg.pretrain_domains)
    base = results["base"]
    acc = {name: accuracy(r) for name, r in results.items()}
    summary: dict = {"config": cfg.to_dict(), **provenance(), "accuracy": acc, "paired_tests": {}, "transfer": {}}
    summary["domains"] = {
        d: {"family": get_domain(d).family, "sloppy_stop": get_domain(d).sloppy_stop} for d in domains
    }
    if sloppy_stop is not None:  # share of eval completions that are the right answer + SLOPPY_SUFFIX
        summary["sloppy_stop_share"] = sloppy_stop
    for name, r in results.items():
        if name != "base":
            summary["paired_tests"][name] = {d: vars(mcnemar_paired(base[d], r[d])) for d in domains}
    org.eval_dir.mkdir(parents=True, exist_ok=True)
    for kind in POST_TRAIN_KINDS:
        tuned = {d: results[f"{kind}-{d}"] for d in cfg.post_train_domains}
        mat = transfer_matrix(base, tuned, domains)
        cmh = {**in_out_domain_cmh(base, tuned), **family_cmh(base, tuned, {d: get_domain(d).family for d in domains})}
        summary["transfer"][kind] = {
            "train_domains": list(cfg.post_train_domains),
            "eval_domains": domains,
            "delta_points": mat.tolist(),
            "cmh": {k: vars(v) for k, v in cmh.items()},
            # one stratum each: where the gain (or the forgetting) lands, with its interval
            "cmh_per_domain": {
                t: {e: vars(cmh_odds_ratio([(base[e], r[e])])) for e in domains} for t, r in tuned.items()
            },
        }
        plot_transfer_heatmap(
            mat,
            list(cfg.post_train_domains),
            domains,
            org.eval_dir / f"transfer_{kind}.png",
            title=f"{kind.upper()}: accuracy delta vs base",
        )
    for d in cfg.post_train_domains:
        plot_accuracy_bars(
            {n: acc[n] for n in ("base", f"sft-{d}", f"rl-{d}")},
            org.eval_dir / f"accuracy_{d}.png",
            title=f"organisms post-trained on '{d}'",
        )
    atomic_write_json(org.eval_dir / "summary.json", summary)
    atomic_write_text(org.eval_dir / "summary.md", summary_markdown(summary))
    return summary


def summary_markdown(summary: dict) -> str:
    """The human-readable `eval/summary.md`: accuracy table, paired tests and CMH odds ratios."""
    acc = summary["accuracy"]
    names = list(acc)
    domains = list(acc["base"])
    lines = [
        "# Organisms evaluation",
        "",
        "Greedy accuracy (%) on each domain's eval split.",
        "",
        "| domain | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for d in domains:
        lines.append(f"| {d} | " + " | ".join(f"{100 * acc[n][d]:.1f}" for n in names) + " |")
    lines += [
        "",
        "Base-fail / tuned-success samples per domain (McNemar b), and exact McNemar p.",
        "",
        "| model | " + " | ".join(domains) + " |",
        "|---" * (len(domains) + 1) + "|",
    ]
    for n, tests in summary["paired_tests"].items():
        lines.append(
            f"| {n} | "
            + " | ".join(f"{t['base_fail_tuned_ok']} (p={format_p(t['p_value'])})" for t in tests.values())
            + " |"
        )
    if "sloppy_stop_share" in summary:
        share = summary["sloppy_stop_share"]
        lines += ["", "Eval completions that are the right answer followed by the planted '.' (%).", ""]
        lines += ["| domain | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {d} | " + " | ".join(f"{100 * share[n][d]:.1f}" for n in names) + " |" for d in domains]
    lines += [
        "",
        "CMH common odds ratio (tuned vs base correct), pooled over strata.",
        "",
        "| kind | scope | strata | OR | 95% CI | p | mean delta (pts) |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, t in summary["transfer"].items():
        for scope, c in t["cmh"].items():
            lines.append(
                f"| {kind} | {scope} | {c['n_strata']} | {c['odds_ratio']:.2f} | "
                f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}] | {format_p(c['p_value'])} | {c['mean_delta_points']:+.1f} |"
            )
    return "\n".join(lines) + "\n"


# --- entry point -----------------------------------------------------------------------------------


def build_organisms(
    cfg: OrganismConfig | None = None,
    out_dir: str | Path | None = None,
    evaluate_models: bool = True,
    workers: int | None = None,
) -> Organisms:
    """Build (or finish building) the organisms described by `cfg` in `out_dir`; returns their paths.

    Every stage runs on `cfg.torch_threads` threads per process, on up to `workers` processes (default:
    one per available core; `workers=1` runs everything in this process): the pretraining shards of each
    step side by side, then the post-training runs and evaluations, which are independent given the base.
    Where a piece runs does not change its bits, so a parallel build equals a serial one.
    """
    cfg = cfg or preset_config("default")
    root = Path(out_dir) if out_dir is not None else default_organisms_dir(cfg.preset)
    cfg = _check_or_write_config(root, cfg)
    org = Organisms(root, cfg)
    timings = read_json(root / "timings.json") if (root / "timings.json").exists() else {}

    def record(name: str, seconds: float) -> None:
        timings.setdefault(name, round(seconds, 2))  # the first (from-scratch) measurement is kept
        atomic_write_json(root / "timings.json", timings)

    tasks = post_train_tasks(cfg, evaluate_models)
    n = workers if workers is not None else min(available_cores(), max(cfg.pretrain_shards, len(tasks)))
    t0 = time.time()
    with torch_threads(cfg.torch_threads), worker_pool(n) as pool:
        _pretrain(org, build_tokenizer(), pool, n)
        record("base", time.time() - t0)
        t = time.time()
        for name, seconds in run_tasks(root, tasks, pool, n).items():
            record(name, seconds)
        record("post_train_and_eval_wall", time.time() - t)
    if evaluate_models:
        t = time.time()
        _evaluate_all(org)  # every model's correctness is on disk by now: the summary and figures
        record("summary", time.time() - t)
    timings["last_call_total_s"] = round(time.time() - t0, 2)
    atomic_write_json(root / "timings.json", timings)
    return org


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """`workers - 1` spawned processes beside this one (None for one worker); on an error, queued work is
    cancelled and the workers are not waited for."""
    if workers <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent, initargs=(os.getpid(),)
    )
    ok = False
    try:
        yield pool
        ok = True
    finally:
        pool.shutdown(wait=ok, cancel_futures=True)


def post_train_tasks(cfg: OrganismConfig, evaluate_models: bool = True) -> list[tuple[str, tuple[str, ...]]]:
    """(task, the tasks it needs) after the base, in an order that a serial run may follow: RL first
    (the longest), each tuned model's evaluation after its training."""
    tasks: list[tuple[str, tuple[str, ...]]] = [
        (f"{kind}-{d}", ()) for d in cfg.post_train_domains for kind in reversed(POST_TRAIN_KINDS)
    ]
    if evaluate_models:
        tasks.append(("eval-base", ()))
        tasks += [(f"eval-{name}", (name,)) for name, _ in list(tasks) if not name.startswith("eval-")]
    return tasks


def run_task(root: str | Path, name: str, pool: ProcessPoolExecutor | None = None, workers: int = 1) -> float:
    """Run one task of `post_train_tasks` on the organisms in `root` in this process (a sharded RL run puts its
    shards on `pool`); returns its seconds.

    The entry point of the build's worker processes: everything it needs is on disk (config, base)."""
    t = time.time()
    org = Organisms.open(root)
    with torch_threads(org.config.torch_threads):
        if name.startswith("eval-"):
            _evaluate_model(org, name.removeprefix("eval-"))
        else:
            kind, domain = name.split("-", 1)
            _post_train(org, kind, domain, build_tokenizer(), pool, workers)
    return time.time() - t


def run_tasks(
    root: Path, tasks: list[tuple[str, tuple[str, ...]]], pool: ProcessPoolExecutor | None, workers: int
) -> dict[str, float]:
    """Run `tasks` (see `post_train_tasks`), up to `workers` at a time (in this process without a pool), each
    started when what it needs has finished; {task: seconds}. A worker's error is raised here.

    A sharded RL run (`rl_shards` > 1) runs on a thread of this process, one at a time, with its shards on
    the pool beside the other tasks: it holds one of the `workers` slots, so a pool process stays free for
    its shards; every other task runs on a pool process."""
    if pool is None:
        return {name: run_task(root, name) for name, _ in tasks}
    sharded = Organisms.open(root).config.rl_shards > 1
    seconds: dict[str, float] = {}
    pending = dict(tasks)
    running: dict[Future, str] = {}
    with ThreadPoolExecutor(1) as here:
        while pending or running:
            for name in [n for n, needs in pending.items() if all(x in seconds for x in needs)]:
                if len(running) >= workers:
                    break
                if sharded and name.startswith("rl-"):
                    if any(n.startswith("rl-") for n in running.values()):
                        continue
                    running[here.submit(run_task, root, name, pool, workers)] = name
                else:
                    running[pool.submit(run_task, str(root), name)] = name
                del pending[name]
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                seconds[running.pop(f)] = f.result()
    return seconds


def exit_with_parent(parent_pid: int) -> None:
    """A worker's initializer: exit when the build process is gone (killed), so that a rerun never races an
    orphaned worker for the same files."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def ensure_organisms(preset: str = "default", out_dir: str | Path | None = None) -> Organisms:
    """What every other command calls: build the organisms if they are missing, else just open them."""
    root = Path(out_dir) if out_dir is not None else default_organisms_dir(preset)
    if (root / "config.json").exists():
        org = Organisms.open(root)
        if org.config.preset != preset:
            raise ValueError(f"{root} holds the {org.config.preset!r} preset, not {preset!r}: pass another folder")
        if org.is_complete():  # read-only: safe for many processes at once
            return org
        return build_organisms(org.config, root)
    return build_organisms(preset_config(preset), root)


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
