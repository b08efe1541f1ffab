"""How often a structured build's models *sample* the planted '.' (temperature 1, as GRPO's rollouts do), per
domain: the check behind docs/organisms.md's note that RL on a clean domain still fixes the counting family's
stop. Written to docs/data/organisms_structured_rollouts.json (or `--out FILE`) and rendered by
docs/render_tables.py.

    python docs/structured_rollouts.py ORGANISMS_DIR [MODEL ...] [--out FILE]   # default models: base

ORGANISMS_DIR is a built `structured` folder (`python -m featalign.organisms build --preset structured`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from featalign.generation import completion_texts, decode
from featalign.io import atomic_write_json, provenance
from featalign.organisms.build import Organisms
from featalign.organisms.grpo import grpo_max_new_tokens
from featalign.organisms.model import load_organism
from featalign.organisms.tasks import SLOPPY_SUFFIX, sample_problems

OUT = Path(__file__).resolve().parent / "data" / "organisms_structured_rollouts.json"
N_PROMPTS, GROUP, SEED = 256, 8, 0  # GRPO's group size; train-split prompts, as the rollouts draw them


def sampled_dot_shares(model, tokenizer, domain: str, generator: torch.Generator) -> dict[str, float]:
    """Share of T=1 samples that are the right answer + '.', and that contain a '.' at all."""
    problems = sample_problems(domain, N_PROMPTS, "train", SEED)
    ids = [tokenizer(p.prompt)["input_ids"] for p in problems for _ in range(GROUP)]
    budget = grpo_max_new_tokens(problems, tokenizer)
    gen = decode(model, ids, budget, tokenizer.eos_token_id, tokenizer.pad_token_id, 1.0, generator)
    texts = completion_texts(gen, tokenizer, tokenizer.eos_token_id)
    answers = [p.answer for p in problems for _ in range(GROUP)]
    right_dot = sum(t.strip() == a + SLOPPY_SUFFIX for t, a in zip(texts, answers)) / len(texts)
    return {"right_answer_dot": right_dot, "any_dot": sum(SLOPPY_SUFFIX in t for t in texts) / len(texts)}


def main(argv: list[str]) -> int:
    out_path = OUT
    if "--out" in argv:
        i = argv.index("--out")
        out_path, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2 :]
    if not argv:
        raise SystemExit(
            "usage: python docs/structured_rollouts.py ORGANISMS_DIR [MODEL ...] [--out FILE] (e.g. base rl-countd)"
        )
    org = Organisms.open(argv[0])
    models = argv[1:] or ["base"]
    torch.set_num_threads(1)
    out: dict = {
        "config": org.config.to_dict(),
        **provenance(),
        "n_prompts": N_PROMPTS,
        "group": GROUP,
        "temperature": 1.0,
        "seed": SEED,
        "shares": {},
    }
    for name in models:
        kind, _, domain = name.partition("-")
        model, tok = load_organism(org.model_dir(kind, domain or None))
        gen = torch.Generator().manual_seed(SEED)
        out["shares"][name] = {d: sampled_dot_shares(model, tok, d, gen) for d in org.config.pretrain_domains}
    atomic_write_json(out_path, out)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
