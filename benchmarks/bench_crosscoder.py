"""Crosscoder training throughput as ratios to this machine's own dense-matmul rate.

    python benchmarks/bench_crosscoder.py [--batch 2048 --latents 4096 --d 128 --models 3 --k 32 --json out.json]

Prints, for one full training step (forward, backward, Adam):
  * dense (L1/ReLU) variant, fp32 and bf16 autocast: achieved FLOP/s over the matmul FLOP/s measured
    right now on the same shapes' scale (target >= 0.8); a dense step is 10·B·K·L matmul FLOPs
    (encoder fwd + weight grad, decoder fwd + weight grad + input grad);
  * BatchTopK (k <= 2% of latents): sparse-decoder step vs the same model with a dense decode
    (target >= 2x), and the relative loss difference (target <= 1e-4).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from featalign.crosscoder import Crosscoder, CrosscoderConfig


def matmul_flops(n: int, dtype: torch.dtype, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def step_time(model: Crosscoder, x_BK: torch.Tensor, bf16: bool, reps: int, **fw) -> tuple[float, float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as the Trainer

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model.training_forward(x_BK, **fw)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return out.loss.item()

    step()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return min(times), sorted(times)[len(times) // 2]


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--latents", type=int, default=4096)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--models", type=int, default=3)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    B, L = a.batch, a.latents
    names = tuple(f"m{i}" for i in range(a.models))
    K = a.models * a.d
    x = torch.randn(B, K)
    res: dict = {"shape": {"B": B, "K": K, "L": L, "k": a.k}, "threads": torch.get_num_threads()}
    flops = 10 * B * K * L
    print(f"crosscoder step: B={B}, K={K} ({a.models} models x d {a.d}), L={L}; dense step = {flops / 1e9:.1f} GFLOP")
    for dtype, bf16 in ((torch.float32, False), (torch.bfloat16, True)):
        rate = matmul_flops(2048, dtype)
        m = Crosscoder(CrosscoderConfig(models=names, hooks=("h",), d_model=a.d, n_latents=L, variant="l1"))
        best, med = step_time(m, x, bf16, a.reps, sparsity_coef=1.0)
        ratio = flops / best / rate
        key = "bf16" if bf16 else "fp32"
        res[f"dense_{key}"] = {"matmul_gflops": rate / 1e9, "step_s": best, "step_s_median": med,
                               "tokens_per_s": B / best, "ratio_to_matmul": ratio}
        print(f"  dense {key}: matmul {rate / 1e9:7.1f} GFLOP/s | step {best * 1e3:7.1f} ms "
              f"({B / best:8.0f} tok/s) | achieved/matmul = {ratio:.2f} (target >= 0.8)")
    m = Crosscoder(CrosscoderConfig(models=names, hooks=("h",), d_model=a.d, n_latents=L, variant="batchtopk", k=a.k))
    sp, _ = step_time(m, x, False, a.reps, sparse=True)
    dn, _ = step_time(m, x, False, a.reps, sparse=False)
    m2 = Crosscoder(m.cfg)
    l_sp = m2.training_forward(x, sparse=True).loss.item()
    l_dn = m2.training_forward(x, sparse=False).loss.item()
    rel = abs(l_sp - l_dn) / abs(l_dn)
    res["batchtopk"] = {"k_frac": a.k / L, "sparse_step_s": sp, "dense_step_s": dn, "speedup": dn / sp, "loss_rel_diff": rel}
    print(f"  batchtopk k={a.k} ({a.k / L:.2%} of latents): sparse {sp * 1e3:.1f} ms vs dense decode {dn * 1e3:.1f} ms"
          f" -> {dn / sp:.2f}x (target >= 2) | loss rel diff {rel:.1e} (target <= 1e-4)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
