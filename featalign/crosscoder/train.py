"""Crosscoder trainer: Adam, lr warmup + final decay, sparsity-coefficient warmup, grad clipping,
optional bf16 autocast, checkpoint/resume (bitwise on CPU), DDP, JSONL metrics.

Output directory layout (`out_dir=None`: an in-memory run that writes nothing and cannot resume):

    cfg.json, crosscoder.safetensors   the crosscoder (`Crosscoder.load(dir)`), written at the end
    trainer_cfg.json                   the TrainerConfig (a resume with other values is refused)
    checkpoint.pt                      resume state: model, optimizer, scheduler, RNG, data position
    metrics.jsonl                      one JSON object per logged step (loss parts, FVU per model, L0, dead)
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from featalign import distributed
from featalign.activations.normalization import norm_scales_from_mean, norm_sums
from featalign.crosscoder.config import (
    FORMAT_VERSION,
    RESUMABLE_CHANGES,
    CrosscoderConfig,
    TrainerConfig,
    migrate_state_dict,
)
from featalign.crosscoder.data import ActivationSource
from featalign.crosscoder.model import Crosscoder, TrainOutput, check_format_version, read_config, write_config
from featalign.io import atomic_write_bytes, atomic_write_text, canonical_for_pickle

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
TRAINER_CFG_FILE = "trainer_cfg.json"


class NaNLossError(FloatingPointError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


def bf16_matmul_is_fast(device: str | torch.device = "cpu", n: int = 256) -> bool:
    """Whether bf16 matmuls beat fp32 ones on `device`: the train CLI's default for bf16 autocast.

    On CUDA, whether the GPU supports bf16. On a CPU it is measured (an n³ matmul of each dtype, best of
    three): with AMX or AVX512-BF16 bf16 runs ~2.5x faster than fp32, but on an AVX2-only CPU oneDNN has no
    bf16 kernel and the fallback was ~160x *slower* (0.18 vs 29 GFLOP/s on one core), which turned the
    default run from minutes into hours. The two cases are two orders of magnitude apart, so a small
    probe decides them reliably.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False

    def best(dtype: torch.dtype) -> float:
        a = torch.randn(n, n).to(dtype)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            torch.mm(a, a)
            times.append(time.perf_counter() - t)
        return min(times)

    best(torch.bfloat16)  # first call: kernel selection and page faults, not timed
    return best(torch.bfloat16) < best(torch.float32)


def lr_factor(step: int, cfg: TrainerConfig) -> float:
    """Linear warmup over `cfg.warmup` steps, constant, then linear decay to 0 over the last decay_frac."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    decay_start = cfg.steps * (1 - cfg.decay_frac)
    if cfg.decay_frac > 0 and step >= decay_start:
        return max(0.0, (cfg.steps - step) / (cfg.steps * cfg.decay_frac))
    return 1.0


def sparsity_coef_at(step: int, cfg: TrainerConfig) -> float:
    warm = cfg.sparsity_warmup_frac * cfg.steps
    return cfg.sparsity_coef * (min(1.0, (step + 1) / warm) if warm > 0 else 1.0)


def check_source(source: Any, cfg: CrosscoderConfig) -> None:
    """A store whose models/hooks differ from the config is an error that names both lists."""
    for name in ("models", "hooks"):
        have = getattr(source, name, None)
        if have is not None and tuple(have) != tuple(getattr(cfg, name)):
            raise ValueError(
                f"activation source has {name} {tuple(have)} but the crosscoder config expects "
                f"{tuple(getattr(cfg, name))}; pass --{name} {','.join(have)} or cache the store with those {name}"
            )


def fvu_per_model(x_BK: torch.Tensor, x_hat_BK: torch.Tensor, cfg: CrosscoderConfig) -> torch.Tensor:
    """Fraction of variance unexplained for each model (summed over its hooks and dims) -> [M]."""
    B = x_BK.shape[0]
    x = x_BK.float().view(B, cfg.n_models, -1)
    err = (x_hat_BK.float().view(B, cfg.n_models, -1) - x).pow(2).sum((0, 2))
    var = (x - x.mean(0, keepdim=True)).pow(2).sum((0, 2))
    return err / var.clamp_min(1e-12)


class _Loggers:
    """JSONL always (rank 0); tensorboard / wandb when asked for and installed."""

    def __init__(self, out_dir: Path, backends: tuple[str, ...], run_cfg: dict):
        self.path = out_dir / METRICS_FILE
        self.tb = self.wandb = None
        if "tensorboard" in backends:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("tensorboard logging asked for but not installed: pip install tensorboard") from e
            self.tb = SummaryWriter(str(out_dir / "tb"))
        if "wandb" in backends:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("wandb logging asked for but not installed: pip install wandb") from e
            self.wandb = wandb.init(project="featalign", config=run_cfg, dir=str(out_dir))

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint (they will be logged again)."""
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))

    def log(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])
        if self.wandb is not None:
            self.wandb.log(row, step=row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


#: `on_step(step, model, metrics)`: after each completed step; metrics holds the step's loss and its
#: parts (floats), plus everything of the metrics log (FVU per model, L0, dead fraction, lr) on logged steps
StepCallback = Callable[[int, Crosscoder, dict[str, Any]], None]


class Trainer:
    """Train a `Crosscoder` on an `ActivationSource`, checkpointing into `out_dir`.

    If `out_dir` holds a checkpoint the run resumes from it (configs must match, except
    `RESUMABLE_CHANGES`). With `out_dir=None` nothing is written (no configs, checkpoints, metrics
    file or final save): for benchmarks and notebooks that keep the returned model. `on_step` is a
    `StepCallback` (the step index, the model, the step's metrics).
    """

    def __init__(
        self,
        cfg: CrosscoderConfig,
        trainer_cfg: TrainerConfig,
        source: ActivationSource,
        out_dir: str | Path | None,
        dist_info: distributed.DistInfo | None = None,
        loggers: tuple[str, ...] = (),
        on_step: StepCallback | None = None,
        progress: bool = True,
        device: str | torch.device = "cpu",
    ):
        self.cfg, self.tcfg, self.source = cfg, trainer_cfg, source
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out_dir is None and loggers:
            raise ValueError(f"loggers {loggers} need an out_dir to write to; pass out_dir or no loggers")
        self.dist = dist_info or distributed.DistInfo()
        self.on_step, self.progress, self.device = on_step, progress, torch.device(device)
        check_source(source, cfg)
        self.model = Crosscoder(cfg).to(self.device)
        # fused Adam: one kernel over all parameters, faster than the foreach path on CPU
        # (benchmarks/bench_crosscoder.py times the step with it)
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=trainer_cfg.lr, betas=trainer_cfg.adam_betas, fused=True
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, self.tcfg))
        self.step = 0
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self._loggers_backends = loggers

    # --- checkpointing ------------------------------------------------------------------------

    @property
    def _writes(self) -> bool:
        return self.dist.is_main and self.out_dir is not None

    @property
    def _dir(self) -> Path:
        """`out_dir`, where one is required: writing (`_writes`) and resuming only happen with one."""
        if self.out_dir is None:
            raise ValueError("this trainer has no out_dir (an in-memory run writes nothing and cannot resume)")
        return self.out_dir

    def _check_resume_configs(self) -> None:
        old_cc, _ = read_config(self._dir)
        diffs = {f"crosscoder.{k}": v for k, v in old_cc.diff(self.cfg).items()}
        old_tr = TrainerConfig.load(self._dir / TRAINER_CFG_FILE)
        diffs |= {f"trainer.{k}": v for k, v in old_tr.diff(self.tcfg).items() if k not in RESUMABLE_CHANGES}
        if diffs:
            lines = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diffs.items())
            raise ValueError(
                f"refusing to resume {self.out_dir} with a changed config ({lines}). "
                "Use the original settings, or a new --out directory for a new run."
            )

    def _write_configs(self) -> None:
        if not self._writes:
            return
        write_config(self._dir, self.cfg)
        self.tcfg.save(self._dir / TRAINER_CFG_FILE)

    def save_checkpoint(self) -> None:
        if not self._writes:
            return
        state = {
            "format_version": FORMAT_VERSION,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
            "data": self.source.state_dict(),
        }
        buf = io.BytesIO()
        torch.save(canonical_for_pickle(state), buf)  # a resumed run writes the uninterrupted run's bytes
        atomic_write_bytes(self._dir / CHECKPOINT_FILE, buf.getvalue())

    def load_checkpoint(self) -> None:
        path = self._dir / CHECKPOINT_FILE
        state = torch.load(path, map_location=self.device, weights_only=False)
        version = check_format_version(state.get("format_version"), path)
        self.model.load_state_dict(migrate_state_dict(state["model"], self.cfg.variant, version))
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        self.source.load_state_dict(state["data"])
        self.step = int(state["step"])

    # --- normalisation ------------------------------------------------------------------------

    @torch.no_grad()
    def _init_norm_scale(self) -> None:
        """From the source's scalars when it has them, else from a few batches (data position restored)."""
        scales = getattr(self.source, "norm_scales", lambda: None)()
        if scales is None:
            start = self.source.state_dict()
            sums = torch.zeros(self.cfg.n_models, self.cfg.n_hooks, dtype=torch.float64)
            n: float = 0  # a token count; a float once all-reduced across ranks
            for _ in range(self.tcfg.norm_batches):
                x = next(self.source)
                sums += norm_sums(x)
                n += x.shape[0]
            self.source.load_state_dict(start)
            if self.dist.enabled:
                t = torch.cat([sums.view(-1), torch.tensor([float(n)], dtype=torch.float64)])
                distributed.all_reduce(t)
                sums, n = t[:-1].view_as(sums), t[-1].item()
            scales = norm_scales_from_mean(sums / n, self.cfg.d_model)
        scales = torch.as_tensor(scales, dtype=torch.float32)
        if tuple(scales.shape) != (self.cfg.n_models, self.cfg.n_hooks):
            raise ValueError(
                f"norm scales have shape {list(scales.shape)}, expected [{self.cfg.n_models}, {self.cfg.n_hooks}]"
            )
        self.model.norm_scale.copy_(scales)

    # --- training -----------------------------------------------------------------------------

    def _sync(self, out: TrainOutput, n_local: int) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
        """Global firing mask, token count and the variant's statistics (mean over the ranks that have one)."""
        fired = out.fired_L() if callable(out.fired_L) else out.fired_L
        n_tok, stats = n_local, dict(out.stats)
        if self.dist.enabled:
            f = fired.to(torch.int32)
            distributed.all_reduce(f, "max")
            fired, n_tok = f.bool(), n_local * self.dist.world_size
            for k in sorted(stats):
                v = stats[k].double()
                have = torch.isfinite(v)
                t = torch.stack([torch.where(have, v, 0.0), have.double()])
                distributed.all_reduce(t)
                stats[k] = t[0] / t[1]  # NaN when no rank had one
        return fired, n_tok, stats

    def train(self) -> Crosscoder:
        """Train to `steps` (resuming from out_dir's checkpoint), log, checkpoint; returns the crosscoder."""
        loggers = self._start()
        pbar = tqdm(
            total=self.tcfg.steps,
            initial=self.step,
            desc=f"crosscoder[{self.cfg.variant}]",
            disable=not (self.progress and self.dist.is_main),
        )
        self.model.train()
        while self.step < self.tcfg.steps:
            x_BK = self.model.normalise(next(self.source).to(self.device))
            coef = sparsity_coef_at(self.step, self.tcfg)
            out = self.train_step(x_BK, coef)
            if (
                self.tcfg.resample_every
                and self.step % self.tcfg.resample_every == 0
                and self.step <= self.tcfg.resample_until * self.tcfg.steps
            ):
                self._resample(x_BK, out.x_hat_BK.detach())
            self._report(out, x_BK, coef, loggers, pbar)
        pbar.close()
        if loggers is not None:
            loggers.close()
        if self._writes:
            self.model.save(self._dir)
        return self.model

    def train_step(self, x_BK: torch.Tensor, coef: float) -> TrainOutput:
        """One optimisation step on a normalised batch: forward (bf16 autocast if configured), backward,
        gradient averaging and clipping, Adam, the lr schedule, firing counts, the variant's update.
        The whole step, as `benchmarks/bench_crosscoder.py` times it."""
        params = list(self.model.parameters())
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if self.tcfg.bf16 else contextlib.nullcontext()
        )
        with autocast:
            out = self.model.training_forward(x_BK, coef)
        self._check_loss(out.loss)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.dist.enabled:
            distributed.average_gradients(params, self.dist.world_size)
        if self.tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.tcfg.grad_clip)
        self.opt.step()
        self.sched.step()
        fired, n_tok, stats = self._sync(out, x_BK.shape[0])
        self.model.update_firing(fired, n_tok)
        self.model.variant.update(stats)
        self.step += 1
        return out

    def _start(self) -> _Loggers | None:
        """Resume from the checkpoint, or seed everything and write the configs; the metric sinks (rank 0)."""
        if self.out_dir is not None and (self.out_dir / CHECKPOINT_FILE).exists():
            self._check_resume_configs()
            self.load_checkpoint()
        else:
            torch.manual_seed(self.tcfg.seed)
            # checkpoint.pt saves the Python and NumPy RNG states too: seed them so that two runs of one
            # command (or a killed run and its resume) write byte-identical files.
            random.seed(self.tcfg.seed)
            np.random.seed(self.tcfg.seed)
            self._init_norm_scale()
            self._write_configs()
        if not self._writes:
            return None
        configs = {"crosscoder": self.cfg.to_dict(), "trainer": self.tcfg.to_dict()}
        loggers = _Loggers(self._dir, self._loggers_backends, configs)
        loggers.truncate_after(self.step)
        return loggers

    def _check_loss(self, loss: torch.Tensor) -> None:
        """Stop on a non-finite loss (on every rank alike) before the step touches the weights, saying what is kept."""
        loss_check = loss.detach().float().clone()
        if self.dist.enabled:
            distributed.all_reduce(loss_check)
        if torch.isfinite(loss_check):
            return
        if self.out_dir is None:
            kept = "this run was in memory (out_dir=None), nothing was saved"
        else:
            ckpt = self.out_dir / CHECKPOINT_FILE
            kept = (
                f"the last good checkpoint ({ckpt}) is kept"
                if ckpt.exists()
                else "no checkpoint was written yet (the first comes at step "
                f"{self.tcfg.checkpoint_every or self.tcfg.steps})"
            )
        resumable = self.out_dir is not None and (self.out_dir / CHECKPOINT_FILE).exists()
        raise NaNLossError(
            f"loss is {loss_check.item()} at step {self.step}; stopped without saving, {kept}. If the "
            f"activations hold NaN/inf, fix them and rerun{' to resume' if resumable else ''}; otherwise "
            "train with a lower --lr or a --grad-clip into a new --out (a resume refuses changed settings)."
        )

    def _report(self, out, x_BK: torch.Tensor, coef: float, loggers, pbar) -> None:
        """After a step: metrics every log_every (and last), a checkpoint every checkpoint_every, on_step."""
        last = self.step == self.tcfg.steps
        row = None
        if _every(self.step, self.tcfg.log_every) or last:
            row = self._metrics_row(out, x_BK, coef)
            if loggers is not None:
                loggers.log(row)
            pbar.set_postfix(loss=f"{row['loss']:.4g}", l0=f"{row['l0']:.1f}", dead=f"{row['dead_frac']:.3f}")
        if _every(self.step, self.tcfg.checkpoint_every) or last:
            self.save_checkpoint()
        pbar.update(1)
        if self.on_step is not None:
            if row is None:
                parts = {k: v.float().item() for k, v in out.parts.items()}
                row = {"step": self.step, "loss": out.loss.detach().float().item(), **parts}
            self.on_step(self.step, self.model, row)

    @torch.no_grad()
    def _resample(self, x_BK: torch.Tensor, x_hat_BK: torch.Tensor) -> None:
        """Resample dead latents from this batch's errors; reset their Adam moments. Same on every rank:
        the draw uses a generator seeded by (seed, step), the batch is rank 0's (broadcast)."""
        if self.dist.enabled:
            for t in (x_BK, x_hat_BK):
                torch.distributed.broadcast(t, 0)
        g = torch.Generator().manual_seed(self.tcfg.seed * 1_000_003 + self.step)
        dead = self.model.resample_dead(x_BK.float(), x_hat_BK.float(), generator=g)
        if dead.numel() == 0:
            return
        m = self.model
        for p, index in ((m.W_enc, (slice(None), dead)), (m.W_dec, (dead,)), (m.b_enc, (dead,))):
            for key in ("exp_avg", "exp_avg_sq"):
                st = self.opt.state.get(p, {})
                if key in st:
                    st[key][index] = 0.0

    @torch.no_grad()
    def _metrics_row(self, out: TrainOutput, x_BK: torch.Tensor, coef: float) -> dict:
        fvu = fvu_per_model(x_BK, out.x_hat_BK.detach(), self.cfg)
        l0 = out.l0() if callable(out.l0) else out.l0
        vals = torch.cat(
            [torch.stack([out.loss.detach().float(), l0.float()] + [v.float() for v in out.parts.values()]), fvu]
        )
        if self.dist.enabled:
            distributed.all_reduce(vals)
            vals /= self.dist.world_size
        row: dict[str, Any] = {"step": self.step, "loss": vals[0].item(), "l0": vals[1].item()}
        for i, k in enumerate(out.parts):
            row[k] = vals[2 + i].item()
        for m, name in enumerate(self.cfg.models):
            row[f"fvu/{name}"] = vals[2 + len(out.parts) + m].item()
        row |= {
            "dead_frac": self.model.dead_mask().float().mean().item(),
            "lr": self.sched.get_last_lr()[0],
            "sparsity_coef": coef,
        }
        return row | self.model.variant.log_row()


def _every(step: int, n: int) -> bool:
    """Step is a multiple of n (n = 0: never)."""
    return n > 0 and step % n == 0


def train_crosscoder(
    cfg: CrosscoderConfig,
    trainer_cfg: TrainerConfig,
    source: ActivationSource,
    out_dir: str | Path | None = None,
    **kw,
) -> Crosscoder:
    """Convenience wrapper: `Trainer(...).train()`."""
    return Trainer(cfg, trainer_cfg, source, out_dir, **kw).train()
