"""Crosscoder training throughput as ratios to this machine's own dense-matmul rate.

    python benchmarks/bench_crosscoder.py [--batch 2048 --latents 4096 --d 256 --models 3 --k 32 --json out.json]
        [--device cuda]

Prints, for one full training step (`Trainer.train_step`: forward, backward, gradient clipping, Adam, the
variant's update):
  * dense (L1/ReLU) variant, fp32 and bf16 autocast: achieved FLOP/s over the FLOP/s of 2048^3
    torch matmuls of the same dtype (as many FLOPs as a step), timed in the same rounds; median of
    the per-round ratios (target >= 0.8). A dense step is
    10·B·K·L matmul FLOPs (encoder fwd + weight grad, decoder fwd + weight grad + input grad; the
    input needs no gradient). Also printed: the step's five GEMMs alone, as plain `torch.mm` calls of
    its shapes, over the whole step (how much of the step is not GEMM);
  * BatchTopK, fp32 and bf16 autocast: the step over the *encoder-GEMM-bound* rate, i.e. the time of
    the one dense GEMM the step cannot avoid (`x @ W_enc`, [B, K] x [K, L], the step's dtype) over the
    step's time, timed in the same rounds (target >= 0.8 in fp32); also the sparse step vs the same
    model with a dense decode (target >= 2x) and the relative loss difference (target <= 1e-4).

Every timing synchronises the device (`--device cuda` runs everything on the GPU and the ratios are to
that device's own GEMM rates). Defaults: issue 13's size, 3 models x d 256 -> 4096 latents, batch 2048.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from featalign.crosscoder import Crosscoder, CrosscoderConfig, InMemoryActivations, TrainerConfig
from featalign.crosscoder.train import Trainer, bf16_matmul_is_fast


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(cfg: CrosscoderConfig, x_BK: torch.Tensor, bf16: bool, quiet_frac: float = 0.0, coef: float = 1.0):
    """One timed trainer step (`Trainer.train_step`: forward, backward, clipping, fused Adam, the lr schedule,
    firing counts, the variant's update) on `x_BK`'s device, for a fresh crosscoder of `cfg`.

    `quiet_frac`: that share of the latents (a fixed random set) is held quiet for longer than BatchTopK's
    `aux_dead_tokens` before every step, so its aux-k loss trains them, as in a real run (at this size
    40-75% of the latents are quiet late in training); with random inputs every latent fires and the
    aux loss has nothing to do."""
    dev = x_BK.device
    B = x_BK.shape[0]
    source = InMemoryActivations(x_BK.view(B, cfg.n_models, cfg.n_hooks, cfg.d_model), B,
                                 models=cfg.models, hooks=cfg.hooks)
    trainer = Trainer(cfg, TrainerConfig(lr=1e-4, bf16=bf16), source, None, progress=False, device=dev)
    model, L = trainer.model, cfg.n_latents
    quiet = torch.randperm(L, generator=torch.Generator().manual_seed(1))[: int(quiet_frac * L)].to(dev)

    def step() -> float:
        if quiet.numel():
            model.tokens_since_fired[quiet] = 10**9
        sync(dev)
        t = time.perf_counter()
        trainer.train_step(x_BK, coef)
        sync(dev)
        return time.perf_counter() - t

    step()  # warm-up
    return step


def interleaved(fns: list, reps: int) -> list[list[float]]:
    """Run the timed functions round-robin `reps` times: on a shared machine, load changes hit all
    of them alike, so per-round ratios are steadier than ratios of separately taken timings."""
    out = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            out[i].append(f())
    return out


def _median(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--latents", type=int, default=4096)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--models", type=int, default=3)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--quiet-frac", type=float, default=0.4,
                   help="share of latents held quiet in the aux-active BatchTopK timing (see make_step)")
    p.add_argument("--bf16", default="auto", choices=("auto", "force", "skip"),
                   help="time the bf16 autocast steps: auto = only where bf16 matmuls beat fp32 here "
                   "(on an AVX2-only CPU they are ~100x slower and the rounds would take hours)")
    p.add_argument("--reps", type=int, default=5)
    # one thread: on a shared 2-core machine, a second torch thread stalls on the other jobs
    # (parallel sort/matmul wait for it); 0 = torch's default
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda (ratios to that device's own GEMM rate)")
    a = p.parse_args()
    dev = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    B, L = a.batch, a.latents
    names = tuple(f"m{i}" for i in range(a.models))
    K = a.models * a.d
    x = torch.randn(B, K, device=dev)
    res: dict = {"shape": {"B": B, "K": K, "L": L, "k": a.k}, "threads": torch.get_num_threads(), "device": str(dev),
                 "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                 "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    flops = 10 * B * K * L

    def btk(sparse: bool) -> CrosscoderConfig:  # same seed: the same initial weights on both paths
        return CrosscoderConfig(models=names, hooks=("h",), d_model=a.d, n_latents=L, variant="batchtopk",
                                variant_cfg={"k": a.k, "sparse_decode": sparse})

    print(f"crosscoder step: B={B}, K={K} ({a.models} models x d {a.d}), L={L}; dense step = {flops / 1e9:.1f} GFLOP")
    bf16_fast = bf16_matmul_is_fast(dev)
    res["bf16_matmul_faster_than_fp32"] = bf16_fast
    run_bf16 = a.bf16 == "force" or (a.bf16 == "auto" and bf16_fast)
    if not run_bf16:
        print(f"  bf16 steps not timed (--bf16 {a.bf16}; bf16 matmul faster than fp32 here: {bf16_fast})")
    for dtype, bf16 in ((torch.float32, False), (torch.bfloat16, True))[: 2 if run_bf16 else 1]:
        n = 2048
        a_mm, b_mm, c_mm = (torch.randn(n, n, dtype=dtype, device=dev) for _ in range(3))

        n_mm = max(1, round(flops / (2 * n**3)))  # as many FLOPs as a step: both see the same load

        def mm_time() -> float:  # n_mm n^3 matmuls into a kept output; time per matmul
            sync(dev)
            t = time.perf_counter()
            for _ in range(n_mm):
                torch.mm(a_mm, b_mm, out=c_mm)
            sync(dev)
            return (time.perf_counter() - t) / n_mm

        # the step's own five GEMMs as plain torch.mm calls (the shapes and transposes autograd would
        # issue, unpadded K, kept outputs): x W_enc, f W_dec, g_xhat W_dec^T, x^T g_pre, f^T g_xhat
        kw = {"dtype": dtype, "device": dev}
        xs, We, Wd = torch.randn(B, K, **kw), torch.randn(K, L, **kw), torch.randn(L, K, **kw)
        fs, gs = torch.randn(B, L, **kw), torch.randn(B, K, **kw)
        o_BL, o_BK, o_KL, o_LK = (torch.empty(*s_, **kw) for s_ in ((B, L), (B, K), (K, L), (L, K)))

        def gemms_time() -> float:
            sync(dev)
            t = time.perf_counter()
            torch.mm(xs, We, out=o_BL)
            torch.mm(fs, Wd, out=o_BK)
            torch.mm(gs, Wd.t(), out=o_BL)
            torch.mm(xs.t(), fs, out=o_KL)
            torch.mm(fs.t(), gs, out=o_LK)
            sync(dev)
            return time.perf_counter() - t

        def enc_gemm_time() -> float:  # BatchTopK's floor: the encoder GEMM of the step's shape and dtype
            sync(dev)
            t = time.perf_counter()
            torch.mm(xs, We, out=o_BL)
            sync(dev)
            return time.perf_counter() - t

        mm_time(), gemms_time(), enc_gemm_time()
        l1 = CrosscoderConfig(models=names, hooks=("h",), d_model=a.d, n_latents=L, variant="l1")
        mm_t, gm_t, st_t = interleaved([mm_time, gemms_time, make_step(l1, x, bf16)], a.reps)
        ratios = [flops / s_ / (2 * n**3 / m_) for m_, s_ in zip(mm_t, st_t)]
        ratios_g = [g_ / s_ for g_, s_ in zip(gm_t, st_t)]  # same FLOPs: a time ratio
        rate, best = 2 * n**3 / _median(mm_t), _median(st_t)
        key = "bf16" if bf16 else "fp32"
        res[f"dense_{key}"] = {"matmul_gflops": rate / 1e9, "step_gemms_gflops": flops / _median(gm_t) / 1e9,
                               "step_s": best, "tokens_per_s": B / best,
                               "ratio_to_matmul": _median(ratios), "ratio_best": max(ratios),
                               "ratio_to_step_gemms": _median(ratios_g)}
        print(f"  dense {key}: matmul {rate / 1e9:7.1f} GFLOP/s (the step's 5 GEMMs alone: "
              f"{flops / _median(gm_t) / 1e9:.1f}) | step {best * 1e3:7.1f} ms ({B / best:8.0f} tok/s)\n"
              f"    achieved/matmul = {_median(ratios):.2f} median, {max(ratios):.2f} best (target >= 0.8); "
              f"step GEMMs alone / step = {_median(ratios_g):.2f}")
        # BatchTopK against its own floor, the encoder GEMM, interleaved round by round: aux idle (every
        # latent fires) and aux active (`--quiet-frac` of the latents quiet, as late in a real run)
        eg_t, bt_t, ba_t = interleaved([enc_gemm_time, make_step(btk(True), x, bf16),
                                        make_step(btk(True), x, bf16, quiet_frac=a.quiet_frac)], a.reps)
        for suffix, st in (("", bt_t), ("_aux_active", ba_t)):
            r_enc = [e_ / s_ for e_, s_ in zip(eg_t, st)]
            res[f"batchtopk_{key}{suffix}"] = {
                "enc_gemm_s": _median(eg_t), "enc_gemm_gflops": 2 * B * K * L / _median(eg_t) / 1e9,
                "gemm_bound_tokens_per_s": B / _median(eg_t), "step_s": _median(st),
                "tokens_per_s": B / _median(st), "ratio_to_enc_gemm": _median(r_enc), "ratio_best": max(r_enc),
                "quiet_frac": a.quiet_frac if suffix else 0.0}
            what = f"aux active, {a.quiet_frac:.0%} quiet" if suffix else "aux idle"
            print(f"  batchtopk k={a.k} {key} ({what}): encoder GEMM {_median(eg_t) * 1e3:.1f} ms "
                  f"({B / _median(eg_t):.0f} tok/s bound) | step {_median(st) * 1e3:.1f} ms ({B / _median(st):.0f} tok/s)\n"
                  f"    step / GEMM-bound = {_median(r_enc):.2f} median, {max(r_enc):.2f} best (target >= 0.8 fp32)")

    sp_t, dn_t = interleaved([make_step(btk(True), x, False), make_step(btk(False), x, False)], a.reps)
    speed = [d_ / s_ for s_, d_ in zip(sp_t, dn_t)]
    sp, dn = _median(sp_t), _median(dn_t)
    l_sp = Crosscoder(btk(True)).to(dev).training_forward(x).loss.item()
    l_dn = Crosscoder(btk(False)).to(dev).training_forward(x).loss.item()
    rel = abs(l_sp - l_dn) / abs(l_dn)
    res["batchtopk"] = {"k_frac": a.k / L, "sparse_step_s": sp, "dense_step_s": dn, "speedup": _median(speed),
                        "loss_rel_diff": rel}
    print(f"  batchtopk k={a.k} ({a.k / L:.2%} of latents): sparse {sp * 1e3:.1f} ms vs dense decode {dn * 1e3:.1f} ms"
          f" -> {_median(speed):.2f}x median (target >= 2) | loss rel diff {rel:.1e} (target <= 1e-4)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
