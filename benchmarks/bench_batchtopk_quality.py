"""BatchTopK and L1 side by side on planted N-model data with a known dictionary (issue 13's size).

    python benchmarks/bench_batchtopk_quality.py [--steps 300 --json out.json --device cpu]
        [--setting NAME:VARIANT:JSON ...]

Data: `planted_data(n_models=3, d_model=256, n_shared=512, n_specific=170, p_fire=0.02)`: 1,022 planted
features, 512 in all three models (an independent direction in each), 170 in each model alone; fresh
tokens for every step (300 x 2048) plus 20k held-out tokens. Each setting trains 4096 latents at batch
2048 for `--steps` steps, then is scored against the planted truth:

* recovered: best decoder cosine > 0.9 with the planted direction, concatenated over models, raw space;
* model-only recovered: the same over the features present in one model only;
* attribution: recovered *and* attributed to the right model(s) by decoder-norm share (shared: every
  model holds > half of an equal share; model-only: its model holds > 0.9);
* dead: latents that never fire on the held-out tokens under the inference rule (`encode`);
* held-out FVU and L0 (inference rule).

A setting is `name:variant:{json}` where the json holds crosscoder (`cc`), variant (`v`) and trainer
(`tc`) overrides, e.g. `btk_k32:batchtopk:{"v": {"k": 32}}`. Writes every setting's figures and its
training time to `--json`.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from featalign.crosscoder import CrosscoderConfig, InMemoryActivations, Trainer, TrainerConfig, planted_data

MODELS = ("a", "b", "c")

#: L1 next to BatchTopK: the issue's two rows, and the BatchTopK default of this version
DEFAULT_SETTINGS = (
    'l1:l1:{"tc": {"sparsity_coef": 1.0}}',
    'batchtopk:batchtopk:{}',
)


def planted(n_tokens: int, seed: int = 0):
    return planted_data(n_tokens=n_tokens, d_model=256, n_shared=512, n_specific=170, p_fire=0.02, noise=0.01,
                        seed=seed, n_models=len(MODELS))


@torch.no_grad()
def score(model, truth, x_eval_NMHD: torch.Tensor) -> dict[str, float]:
    """Planted-truth figures of a trained crosscoder (see the module docstring)."""
    W_LMD = model.W_dec_raw_LMHD[:, :, 0, :].float()
    W_LX = W_LMD.reshape(W_LMD.shape[0], -1)
    T_FX = truth.directions_FMD.to(W_LX.device).reshape(truth.directions_FMD.shape[0], -1)
    cos_FL = (T_FX / T_FX.norm(dim=-1, keepdim=True)) @ (W_LX / W_LX.norm(dim=-1, keepdim=True).clamp_min(1e-12)).T
    best_F, idx_F = cos_FL.max(1)
    rec_F = best_F > 0.9
    share_FM = W_LMD.norm(dim=-1)[idx_F]
    share_FM = share_FM / share_FM.sum(-1, keepdim=True).clamp_min(1e-12)
    present_FM = truth.present_FM.to(W_LX.device)
    shared_F = present_FM.all(1)
    M = present_FM.shape[1]
    attr_F = torch.where(shared_F, share_FM.min(1).values > 0.5 / M, (share_FM * present_FM).sum(1) > 0.9)
    fvu_num = fvu_den = 0.0
    fired_L = torch.zeros(W_LX.shape[0], dtype=torch.bool, device=W_LX.device)
    l0 = 0.0
    mean = x_eval_NMHD.float().mean(0)
    for s in range(0, x_eval_NMHD.shape[0], 4096):
        xb = x_eval_NMHD[s : s + 4096].to(W_LX.device).float()
        f = model.encode(xb)
        fvu_num += (model.decode(f) - xb).pow(2).sum().item()
        fvu_den += (xb - mean.to(xb.device)).pow(2).sum().item()
        fired_L |= (f > 0).any(0)
        l0 += (f > 0).sum().item()
    return {"recovered": rec_F.float().mean().item(), "model_only_recovered": rec_F[~shared_F].float().mean().item(),
            "shared_recovered": rec_F[shared_F].float().mean().item(),
            "attribution": (rec_F & attr_F).float().mean().item(), "dead": 1 - fired_L.float().mean().item(),
            "fvu": fvu_num / fvu_den, "l0": l0 / x_eval_NMHD.shape[0]}


def parse_setting(s: str) -> tuple[str, str, dict]:
    name, variant, js = s.split(":", 2)
    return name, variant, json.loads(js or "{}")


def run_setting(name: str, variant: str, over: dict, x_train, x_eval, truth, steps: int, batch: int, latents: int,
                device: str) -> dict:
    cc = CrosscoderConfig(models=MODELS, hooks=("h",), d_model=256, n_latents=latents, variant=variant,
                          variant_cfg=over.get("v") or None, **over.get("cc", {}))
    tc = TrainerConfig(**{"steps": steps, "batch_size": batch, "lr": 1e-3, "warmup_steps": 100,
                          "checkpoint_every": 0, "log_every": 0, **over.get("tc", {})})
    src = InMemoryActivations(x_train, batch, models=MODELS, hooks=("h",))
    t = time.perf_counter()
    model = Trainer(cc, tc, src, None, progress=False, device=device).train()
    secs = time.perf_counter() - t
    r = score(model, truth, x_eval)
    return {"name": name, "variant": variant, "overrides": over, **r, "train_s": secs,
            "train_dead_frac": model.dead_mask().float().mean().item()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--latents", type=int, default=4096)
    p.add_argument("--train-tokens", type=int, default=0, help="0 = fresh tokens for every step (steps x batch)")
    p.add_argument("--eval-tokens", type=int, default=20_000)
    p.add_argument("--setting", action="append", default=None, help="name:variant:{json} (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (the data is built on the CPU, batches moved)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    n_train = a.train_tokens or a.steps * a.batch
    t = time.perf_counter()
    x, truth = planted(n_train + a.eval_tokens, a.seed)
    x_train, x_eval = x[:n_train], x[n_train:]
    res: dict = {"data": {"n_models": len(MODELS), "d_model": 256, "n_planted": len(truth.kind),
                          "n_shared": int(truth.present_FM.all(1).sum()), "p_fire": 0.02, "train_tokens": n_train,
                          "eval_tokens": a.eval_tokens, "build_s": time.perf_counter() - t},
                 "steps": a.steps, "batch": a.batch, "latents": a.latents, "device": a.device,
                 "threads": torch.get_num_threads(), "settings": []}
    for s in a.setting or DEFAULT_SETTINGS:
        r = run_setting(*parse_setting(s), x_train, x_eval, truth, a.steps, a.batch, a.latents, a.device)
        res["settings"].append(r)
        print(f"{r['name']:24s} rec {r['recovered']:.3f} only {r['model_only_recovered']:.3f} "
              f"attr {r['attribution']:.3f} dead {r['dead']:.3f} fvu {r['fvu']:.4f} l0 {r['l0']:.1f} "
              f"({r['train_s']:.0f} s)", flush=True)
        if a.json:  # after every setting: a long sweep keeps what it has
            with open(a.json, "w") as f:
                json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
