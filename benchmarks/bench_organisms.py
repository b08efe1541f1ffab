"""Organism training throughput, as ratios to this machine's own ceilings.

    python benchmarks/bench_organisms.py [--preset default] [--steps 30] [--trl]

Prints:
  * pretraining step rate vs a bare forward+backward of the same model on the same padded batch
    (the loop's overhead: data generation, encoding, optimizer);
  * greedy evaluation (KV-cache decode) rows/s;
  * with --trl (needs `pip install trl`): seconds per GRPO step of featalign's compact GRPO vs TRL's
    GRPOTrainer on the same base model, prompts, batch (16 prompts x 8 samples) and completion length.
Writes benchmarks/results/bench_organisms.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from featalign.evaluation import eval_problems, score_problems
from featalign.io import atomic_write_json, provenance
from featalign.organisms.build import _seed, post_train_prompts, pretrain_batch
from featalign.organisms.config import preset_config
from featalign.organisms.grpo import grpo_loss, grpo_max_new_tokens
from featalign.organisms.model import new_model
from featalign.organisms.tasks import get_domain
from featalign.organisms.tokenizer import build_tokenizer
from featalign.organisms.train import answer_loss, encode_supervised, make_optimizer


def _best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_pretrain(cfg, tok, steps: int) -> dict:
    model = new_model(cfg, tok)
    opt = make_optimizer(model, cfg.pretrain_lr)
    batches = [encode_supervised(pretrain_batch(cfg, s), tok) for s in range(steps)]

    def loop():  # what run_steps does per step, data generation included
        for s in range(steps):
            ids, mask = encode_supervised(pretrain_batch(cfg, s + 10_000), tok)
            loss = answer_loss(model, ids, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

    def bare():  # ceiling: forward + backward only, batches pre-encoded
        for ids, _ in batches:
            model(input_ids=ids).logits.float().sum().backward()

    t_loop, t_bare = _best(loop), _best(bare)
    tokens = sum(int(ids.numel()) for ids, _ in batches)
    return {"steps": steps, "loop_s_per_step": t_loop / steps, "bare_fwd_bwd_s_per_step": t_bare / steps,
            "ratio_to_bare": t_bare / t_loop, "padded_tokens_per_s": tokens / t_loop}


def bench_eval(cfg, tok) -> dict:
    model = new_model(cfg, tok).eval()
    probs = eval_problems("add", 500) + eval_problems("sort", 500)
    t = _best(lambda: score_problems(model, tok, probs, cfg.eval_batch), repeats=2)
    return {"rows": len(probs), "rows_per_s": len(probs) / t}


def bench_grpo(cfg, tok, steps: int) -> dict:
    prompts = post_train_prompts(cfg, "add")[: cfg.rl_prompts_per_step * steps]
    base = new_model(cfg, tok)
    max_new = grpo_max_new_tokens(prompts, tok)
    P, G = cfg.rl_prompts_per_step, cfg.rl_group_size

    ours = copy.deepcopy(base).train()
    opt = make_optimizer(ours, cfg.rl_lr)

    def ours_loop():
        for s in range(steps):
            gen = torch.Generator().manual_seed(_seed("bench", s))
            loss, _ = grpo_loss(ours, prompts[s * P:(s + 1) * P], tok, G, 1.0, max_new, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    t_ours = _best(ours_loop, repeats=1) / steps
    out = {"prompts_per_step": P, "group_size": G, "ours_s_per_step": t_ours}
    try:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        out["trl"] = "not installed (pip install trl)"
        return out

    def reward(completions, completion_ids, answer, **_):
        # decoded completions lose <eos> (a special token, skipped when decoding); read the ids
        return [float(tok.eos_token_id in ids and get_domain("add").verify(
            tok.decode([i for i in ids if i != tok.eos_token_id], skip_special_tokens=True), a))
            for ids, a in zip(completion_ids, answer)]

    ds = Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in prompts])

    def trl_run(n: int) -> float:
        with tempfile.TemporaryDirectory() as d:
            args = GRPOConfig(
                output_dir=d, per_device_train_batch_size=P * G, num_generations=G, max_completion_length=max_new,
                learning_rate=cfg.rl_lr, max_steps=n, use_cpu=True, bf16=False, gradient_checkpointing=False,
                report_to="none", save_strategy="no", logging_steps=10_000, temperature=1.0, beta=0.0,
                disable_tqdm=True,
            )
            trainer = GRPOTrainer(model=copy.deepcopy(base), reward_funcs=reward, args=args, train_dataset=ds,
                                  processing_class=tok)
            t = time.perf_counter()
            trainer.train()
            return time.perf_counter() - t

    t_short, t_long = trl_run(2), trl_run(steps)
    out["trl_s_per_step"] = (t_long - t_short) / (steps - 2)
    out["trl_over_ours"] = out["trl_s_per_step"] / t_ours
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--trl", action="store_true", help="also time TRL's GRPOTrainer")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg, tok = preset_config(args.preset), build_tokenizer()
    res = {"preset": args.preset, **provenance(), "pretrain": bench_pretrain(cfg, tok, args.steps),
           "eval": bench_eval(cfg, tok)}
    if args.trl:
        res["grpo"] = bench_grpo(cfg, tok, args.steps)
    print(json.dumps(res, indent=2))
    out = Path(__file__).parent / "results" / "bench_organisms.json"
    atomic_write_json(out, res)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
