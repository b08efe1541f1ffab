"""Matryoshka BatchTopK against BatchTopK on the organisms (issue 12): the same models, activations,
latents, k and steps; held-out FVU per model (inference and training rule), L0, dead latents,
model-specific latents and Latent Scaling artifacts among them (`featalign.analysis.attribution`), the
graded pairwise counts (NRN vs base >= `lean`); and on the planted dictionary of
`tests/crosscoder/test_planted.py` (known shared and model-only directions): recovery and attribution.

    python examples/compare_matryoshka.py                        # default organisms, base / rl / sft
    python examples/compare_matryoshka.py --variants batchtopk,matryoshka,l1

Writes `results.json` in `--out` (cached activations and crosscoders are reused by a rerun).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from featalign.analysis.attribution import attribute
from featalign.analysis.config import AnalyzeConfig
from featalign.analysis.inputs import organisms_train_eval
from featalign.analysis.training import train_or_load
from featalign.config import JsonConfig, cli_config, start_run
from featalign.crosscoder import evaluate
from featalign.io import atomic_write_json, atomic_write_text, provenance


@dataclass
class CompareConfig(JsonConfig):
    out: str = "runs/examples/compare_matryoshka"
    organisms_preset: str = "default"
    organisms_dir: str | None = None
    models: str = "base,rl,sft"
    variants: str = "batchtopk,matryoshka"
    n_latents: int = 1024
    k: int = 16
    steps: int = 600
    n_tokens: int = 40_000
    eval_tokens: int = 10_000
    lean: float = 0.6
    planted_steps: int = 1200  # 0 skips the planted-dictionary comparison
    seed: int = 0
    threads: int = 1
    progress: bool = True


HELP = {"out": "output folder", "organisms_preset": "organisms preset", "organisms_dir": "organisms folder",
        "models": "models of the crosscoders (names of the organisms' trio)", "variants": "variants, comma-separated",
        "n_latents": "latents", "k": "k (batchtopk, matryoshka)", "steps": "crosscoder steps",
        "n_tokens": "training tokens per model", "eval_tokens": "held-out tokens", "seed": "seed",
        "lean": "graded counts: NRN vs base >= lean", "planted_steps": "steps on the planted dictionary (0: skip)",
        "threads": "torch threads", "progress": "progress bars"}


def planted(variant: str, cfg: CompareConfig) -> dict:
    """Train on the planted dictionary of the test suite; share of planted directions recovered (cosine
    > 0.9) and recovered + attributed to the right model(s), overall and for the model-only ones."""
    from featalign.crosscoder import CrosscoderConfig, InMemoryActivations, Trainer, TrainerConfig, planted_data

    x, truth = planted_data(n_tokens=40_000, d_model=32, n_shared=48, n_specific=24, seed=cfg.seed)
    cc = CrosscoderConfig(models=("A", "B"), hooks=("h",), d_model=32, n_latents=256, variant=variant,
                          variant_cfg={"k": 4, "aux_k": 16}, dead_tokens=20_000)
    tc = TrainerConfig(steps=cfg.planted_steps, batch_size=512, lr=3e-3, warmup_steps=50, checkpoint_every=0,
                       log_every=0)
    m = Trainer(cc, tc, InMemoryActivations(x, 512, models=("A", "B"), hooks=("h",)), None, progress=False).train()
    W_LMD = m.W_dec_raw_LMHD[:, :, 0].detach()
    W = W_LMD.reshape(len(W_LMD), -1)
    T = truth.directions_FMD.reshape(len(truth.directions_FMD), -1)
    best, idx = ((T / T.norm(dim=-1, keepdim=True)) @ (W / W.norm(dim=-1, keepdim=True)).T).max(1)
    share = W_LMD.norm(dim=-1)[idx]
    share = share / share.sum(-1, keepdim=True)
    shared = truth.present_FM.all(1)
    correct = torch.where(shared, share.min(1).values > 0.2, (share * truth.present_FM).sum(1) > 0.9)
    ok, rec = (best > 0.9) & correct, best > 0.9
    return {"recovered": rec.float().mean().item(), "recovered_attributed": ok.float().mean().item(),
            "model_only_recovered_attributed": ok[~shared].float().mean().item(),
            "dead_frac": m.dead_mask().float().mean().item()}


def main(argv: list[str] | None = None) -> dict:
    cfg = cli_config(CompareConfig, HELP, "compare_matryoshka.py", __doc__, argv)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    out = start_run(cfg, cfg.out)
    names, hook, x, xe, organisms_root = organisms_train_eval(cfg, out)
    res = {"config": cfg.to_dict(), **provenance(), "organisms": organisms_root, "hook": hook, "variants": {}}
    for v in (v for v in cfg.variants.split(",") if v):
        t = time.time()
        acfg = AnalyzeConfig(out=str(out), variant=v, n_latents=cfg.n_latents, k=cfg.k, steps=cfg.steps,
                             seed=cfg.seed, progress=cfg.progress, sparsity_coef=1.0)
        cc = train_or_load(out / f"crosscoder-{v}", names, x, hook, acfg)
        train_s = time.time() - t
        ev = evaluate(cc, xe)
        ev_tr = evaluate(cc, xe, batch=min(acfg.batch_size, len(xe)), rule="training")
        att = attribute(cc, xe)
        counts = att.counts()
        specific = {c: n for c, n in counts.items() if c.endswith("-only")}
        art_by_class = {}
        for c, a in zip(att.classes, att.artifact_L.tolist()):
            if a and c.endswith("-only"):
                art_by_class[c] = art_by_class.get(c, 0) + 1
        lean = {f"{p}-leaning": int(((att.nrn[p] >= cfg.lean) & (att.enc["firing_rate"] > 0)).sum())
                for p in att.nrn if p.startswith(names[0] + "|")}
        res["variants"][v] = {
            "fvu": {n: ev["per_model"][n]["fvu"] for n in names},
            "fvu_training_rule": {n: ev_tr["per_model"][n]["fvu"] for n in names},
            "l0": ev["l0"], "l0_training_rule": ev_tr["l0"], "dead_frac": ev["dead_frac"],
            "class_counts": counts, "model_specific": specific, "n_model_specific": sum(specific.values()),
            "latent_scaling_artifacts": int(att.artifact_L.sum()), "artifacts_among_specific": art_by_class,
            "leaning": lean, "planted": planted(v, cfg) if cfg.planted_steps else None,
            "train_seconds": round(train_s, 1)}
        print(v, res["variants"][v])
    res["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "results.json", res)
    atomic_write_text(out / "table.md", markdown(res))
    print(markdown(res))
    return res


def planted_cell(p: dict | None) -> str:
    if not p:
        return "–"
    return " / ".join(f"{100 * p[k]:.0f}%" for k in ("recovered", "recovered_attributed",
                                                     "model_only_recovered_attributed", "dead_frac"))


def markdown(res: dict) -> str:
    """The comparison table of docs/crosscoder.md, from `results.json`."""
    names = [n for n in res["config"]["models"].split(",") if n]
    lines = [f"| variant | held-out FVU {' / '.join(names)} (inference rule) | FVU (training rule) | L0 (inference) | "
             "dead | model-specific latents | Latent Scaling artifacts (among them) | leaning (NRN vs base >= "
             f"{res['config']['lean']}) | planted: recovered / + attributed / model-only / dead |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v, r in res["variants"].items():
        spec = ", ".join(f"{c} {n}" for c, n in sorted(r["model_specific"].items())) or "none"
        arts = sum(r["artifacts_among_specific"].values())
        fvu = " / ".join(f"{r['fvu'][n]:.4f}" for n in names)
        fvu_tr = " / ".join(f"{r['fvu_training_rule'][n]:.4f}" for n in names)
        lines.append(f"| `{v}` | {fvu} | {fvu_tr} | {r['l0']:.1f} | "
                     f"{100 * r['dead_frac']:.1f}% | {r['n_model_specific']} ({spec}) | "
                     f"{r['latent_scaling_artifacts']} ({arts}) | "
                     f"{', '.join(f'{k} {n}' for k, n in r['leaning'].items())} | {planted_cell(r['planted'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
