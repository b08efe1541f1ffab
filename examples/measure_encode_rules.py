"""How much of a crosscoder's joint encoding each rule for "model m's latents" keeps (issue 12).

A crosscoder's encoder reads every model's activations on the same token; a live model has only its
own. On paired held-out tokens of the organisms, for each model m and each rule, against the joint
encoding f_J (all models' activations):

- `encode_as` (featalign's rule): m's normalised activation in every model's slot;
- `copy_raw`: m's raw activation in every slot, each normalised with that slot's own scale;
- `slot_only`: m's slot alone, the other models' slots zero (the interventions' former rule);

firings kept = #(f_r > 0 and f_J > 0) / #(f_J > 0); extra firings = #(f_r > 0, f_J = 0) / #(f_J > 0);
mass ratio = sum f_r / sum f_J; mass kept = sum min(f_r, f_J) / sum f_J; also the firings kept on the
latents leaning to m (decoder-norm share >= `lean`; 0.6 is NRN >= 0.6 for two models), where copying m's
activation into the other models' slots could misrepresent a model-specific latent.

    python examples/measure_encode_rules.py                         # default organisms
    python examples/measure_encode_rules.py --variants batchtopk,l1 --out runs/encode_rules

Writes `results.json` (and reuses the cached activations / crosscoders of a previous run in `--out`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from featalign.analysis.config import AnalyzeConfig
from featalign.analysis.inputs import organisms_train_eval
from featalign.analysis.training import train_or_load
from featalign.config import JsonConfig, cli_config, start_run
from featalign.io import atomic_write_json, atomic_write_text, provenance


@dataclass
class EncodeRulesConfig(JsonConfig):
    out: str = "runs/examples/encode_rules"
    organisms_preset: str = "default"
    organisms_dir: str | None = None
    models: str = "base,rl"  # the crosscoder's models, from the organisms' default trio (base, rl, sft)
    variants: str = "batchtopk,l1"
    n_latents: int = 1024
    k: int = 16
    steps: int = 600
    n_tokens: int = 40_000
    eval_tokens: int = 10_000
    lean: float = 0.6
    seed: int = 0
    threads: int = 1
    progress: bool = True


HELP = {"out": "output folder", "organisms_preset": "organisms preset", "organisms_dir": "organisms folder",
        "models": "models of the crosscoders (comma-separated names of the organisms' trio)",
        "variants": "crosscoder variants to measure, comma-separated", "n_latents": "latents", "k": "batchtopk k",
        "steps": "crosscoder steps", "n_tokens": "training tokens per model", "eval_tokens": "held-out paired tokens",
        "lean": "decoder-norm share above which a latent leans to a model (the last column)",
        "seed": "seed", "threads": "torch threads", "progress": "progress bars"}


def rule_latents(cc, x_NMHD: torch.Tensor, m: int) -> dict[str, torch.Tensor]:
    """Each rule's latents of model m, all through the crosscoder's public encoders."""
    x_m = x_NMHD[:, m]
    copy_raw = x_m[:, None].expand(-1, cc.cfg.n_models, -1, -1).contiguous()
    slot = torch.zeros_like(x_NMHD)
    slot[:, m] = x_m
    return {"encode_as": cc.encode_as(x_m, m), "copy_raw": cc.encode(copy_raw), "slot_only": cc.encode(slot)}


@torch.no_grad()
def retention(cc, x_NMHD: torch.Tensor, lean: float = 0.6, batch: int = 2048) -> dict:
    """Per model and rule: firings and activation mass kept relative to the joint encoding."""
    from featalign.analysis.attribution import decoder_norms, model_attribution_scores

    names = cc.cfg.models
    specific_LM = model_attribution_scores(decoder_norms(cc)) >= lean
    joint = {n: torch.zeros(3, dtype=torch.float64) for n in names}  # firings, mass, firings on m-specific
    acc = {n: {} for n in names}  # rule -> [both, extra, mass, mass kept, specific both]
    for i in range(0, len(x_NMHD), batch):
        x = x_NMHD[i : i + batch].float()
        f_J = cc.encode(x)
        on_J = f_J > 0
        for m, name in enumerate(names):
            sp = specific_LM[:, m][None]
            joint[name] += torch.tensor([on_J.sum(), f_J.sum(), (on_J & sp).sum()], dtype=torch.float64)
            for rule, f in rule_latents(cc, x, m).items():
                on = f > 0
                a = acc[name].setdefault(rule, torch.zeros(5, dtype=torch.float64))
                a += torch.tensor([(on & on_J).sum(), (on & ~on_J).sum(), f.sum(), torch.minimum(f, f_J).sum(),
                                   (on & on_J & sp).sum()], dtype=torch.float64)
    out = {}
    for m, name in enumerate(names):
        nJ, mJ, sJ = joint[name].tolist()
        out[name] = {"n_leaning_latents": int(specific_LM[:, m].sum()), "joint_firings_per_token": nJ / len(x_NMHD)}
        for rule, a in acc[name].items():
            both, extra, mass, kept, sp = a.tolist()
            out[name][rule] = {"firings_kept": both / nJ, "extra_firings": extra / nJ, "mass_ratio": mass / mJ,
                               "mass_kept": kept / mJ, "leaning_firings_kept": sp / sJ if sJ else None}
    return out


def main(argv: list[str] | None = None) -> dict:
    cfg = cli_config(EncodeRulesConfig, HELP, "measure_encode_rules.py", __doc__, argv)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    out = start_run(cfg, cfg.out)
    names, hook, x, xe, organisms_root = organisms_train_eval(cfg, out)
    res = {"config": cfg.to_dict(), **provenance(), "organisms": organisms_root, "hook": hook, "crosscoders": {}}
    for v in (v for v in cfg.variants.split(",") if v):
        acfg = AnalyzeConfig(out=str(out), variant=v, n_latents=cfg.n_latents, k=cfg.k, steps=cfg.steps,
                             seed=cfg.seed, progress=cfg.progress, sparsity_coef=1.0)
        cc = train_or_load(out / f"crosscoder-{v}", names, x, hook, acfg)
        res["crosscoders"][v] = {"per_model": retention(cc, xe, cfg.lean), "alive": int((cc.encode(xe[:4096]) > 0).any(0).sum())}
        print(v, res["crosscoders"][v])
    res["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "results.json", res)
    atomic_write_text(out / "table.md", markdown(res))
    print(markdown(res))
    return res


def markdown(res: dict) -> str:
    """The retention table of docs/crosscoder.md, from `results.json`."""
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = ["| crosscoder | model | rule | firings kept | extra firings | mass ratio | mass kept | "
             f"firings kept on latents leaning to m (share >= {res['config']['lean']}) |", "|---|---|---|---|---|---|---|---|"]
    for v, r in res["crosscoders"].items():
        for name, rules in r["per_model"].items():
            for rule in ("encode_as", "copy_raw", "slot_only"):
                a = rules[rule]
                lines.append(f"| {v} | {name} | `{rule}` | {pct(a['firings_kept'])} | {pct(a['extra_firings'])} | "
                             f"{a['mass_ratio']:.3f} | {pct(a['mass_kept'])} | {pct(a['leaning_firings_kept'])} "
                             f"({rules['n_leaning_latents']} latents) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
