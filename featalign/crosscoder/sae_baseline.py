"""The "base SAE" baseline: a single-model BatchTopK SAE trained with sae_lens on the base model's
activations, then applied unchanged to every model's activations (one shared feature space,
like the crosscoder's, but learned from the base alone).

Trained through sae_lens's own `SAETrainer` from an iterator of `[batch, d_in]` tensors; saved in
sae_lens's inference format (a JumpReLU SAE: `cfg.json` + `sae_weights.safetensors`), so
`sae_lens.SAE.load_from_disk(dir)` loads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor


def train_base_sae(
    source,
    out_dir: str | Path,
    model_index: int = 0,
    hook_index: int = 0,
    steps: int = 2000,
    k: int = 32,
    d_sae: int = 2048,
    lr: float = 1e-3,
    warmup_steps: int = 100,
    seed: int = 0,
):
    """Train on `source` (yields `[B, M, H, D]`; only `[:, model_index, hook_index]` is used) -> sae_lens SAE.

    Returns the saved inference SAE loaded back from `out_dir`.
    """
    from sae_lens import SAE
    from sae_lens.config import LoggingConfig
    from sae_lens.saes.sae import TrainingSAE
    from sae_lens.training.sae_trainer import SAETrainer, SAETrainerConfig

    first = next(source)
    B, d_in = first.shape[0], first.shape[-1]
    models = getattr(source, "models", None)
    hooks = getattr(source, "hooks", None)

    def provider() -> Iterator[Tensor]:
        yield first[:, model_index, hook_index].float()
        while True:
            yield next(source)[:, model_index, hook_index].float()

    torch.manual_seed(seed)
    sae = TrainingSAE.from_dict(
        {
            "architecture": "batchtopk",
            "d_in": d_in,
            "d_sae": d_sae,
            "k": k,
            "normalize_activations": "expected_average_only_in",
            "apply_b_dec_to_input": False,
            "metadata": {
                "model_name": models[model_index] if models else f"model{model_index}",
                "hook_name": hooks[hook_index] if hooks else f"hook{hook_index}",
            },
        }
    )
    tcfg = SAETrainerConfig(
        total_training_samples=steps * B,
        train_batch_size_samples=B,
        lr=lr,
        lr_end=lr / 10,
        lr_scheduler_name="constant",
        lr_warm_up_steps=warmup_steps,
        lr_decay_steps=steps // 5,
        device="cpu",
        n_batches_for_norm_estimate=8,
        logger=LoggingConfig(log_to_wandb=False),
        dead_feature_window=max(1, 200_000 // B),
        feature_sampling_window=max(1, steps // 4),
    )
    trained = SAETrainer(cfg=tcfg, sae=sae, data_provider=provider()).fit()
    out_dir = Path(out_dir)
    trained.save_inference_model(out_dir)
    return SAE.load_from_disk(out_dir)


@torch.no_grad()
def apply_sae(sae, x_BMHD: Float[Tensor, "B M H D"], hook_index: int = 0) -> tuple[Tensor, Tensor]:
    """Apply one SAE to every model's activations at one hook -> (latents [B, M, L], recon [B, M, D])."""
    x_BMD = x_BMHD[:, :, hook_index].float()
    B, M, D = x_BMD.shape
    f = sae.encode(x_BMD.reshape(B * M, D))
    x_hat = sae.decode(f)
    return f.view(B, M, -1), x_hat.view(B, M, D)


@torch.no_grad()
def sae_baseline_eval(sae, x_NMHD: Tensor, models: tuple[str, ...], hook_index: int = 0, batch: int = 4096) -> dict:
    """Per model: FVU and L0 of the base SAE applied to that model (the baseline's alignment quality)."""
    M = x_NMHD.shape[1]
    err = torch.zeros(M, dtype=torch.float64)
    sq = torch.zeros(M, dtype=torch.float64)
    s = torch.zeros(M, x_NMHD.shape[-1], dtype=torch.float64)
    l0 = torch.zeros(M, dtype=torch.float64)
    n = 0
    for i in range(0, x_NMHD.shape[0], batch):
        x = x_NMHD[i : i + batch, :, hook_index].double()
        f, x_hat = apply_sae(sae, x_NMHD[i : i + batch], hook_index)
        err += (x_hat.double() - x).pow(2).sum((0, 2))
        sq += x.pow(2).sum((0, 2))
        s += x.sum(0)
        l0 += (f > 0).sum((0, 2)).double()
        n += x.shape[0]
    fvu = err / (sq - s.pow(2).sum(-1) / n)
    return {name: {"fvu": fvu[m].item(), "l0": (l0[m] / n).item()} for m, name in enumerate(models)}
