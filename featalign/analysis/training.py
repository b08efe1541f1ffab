"""The crosscoders an analysis trains on in-memory activations, reused across reruns only when nothing changed."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from featalign.io import jsonable

TRAINED_ON_FILE = "trained_on.json"


def activations_sha256(x: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes: two trainings saw the same activations exactly when these agree."""
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().data.cast("B")).hexdigest()


def crosscoder_configs(models: tuple[str, ...], hook: str, d_model: int, n_rows: int, cfg: Any):
    """(CrosscoderConfig, TrainerConfig) of an analysis crosscoder from the analysis settings `cfg`
    (an AnalyzeConfig or any config with its crosscoder fields)."""
    from featalign.crosscoder import CrosscoderConfig, TrainerConfig
    from featalign.crosscoder.variants import has_field

    crosscoder_cfg = CrosscoderConfig(
        models=models,
        hooks=(hook,),
        d_model=d_model,
        n_latents=cfg.n_latents,
        variant=cfg.variant,
        variant_cfg={"k": cfg.k} if has_field(cfg.variant, "k") else None,
        seed=cfg.seed,
    )
    trainer_cfg = TrainerConfig(
        steps=cfg.steps,
        batch_size=min(cfg.batch_size, n_rows),
        lr=cfg.lr,
        sparsity_coef=cfg.sparsity_coef,
        warmup_steps=min(100, cfg.steps // 10 + 1),
        checkpoint_every=max(200, cfg.steps // 2),
        log_every=max(50, cfg.steps // 10),
        seed=cfg.seed,
    )
    return crosscoder_cfg, trainer_cfg


def changed_settings(old: dict, new: dict) -> list[str]:
    """What differs between two `trained_on.json` records, one 'section.key: old -> new' line each."""
    changed = [
        f"{sec}.{k}: {old.get(sec, {}).get(k)!r} -> {new[sec].get(k)!r}"
        for sec in ("crosscoder", "trainer")
        for k in sorted(set(old.get(sec, {})) | set(new[sec]))
        if old.get(sec, {}).get(k) != new[sec].get(k)
    ]
    if old.get("activations_sha256") != new["activations_sha256"]:
        changed.append("training activations (--n-tokens / --seed / --hook / the models)")
    return changed


def train_or_load(out: Path, models: tuple[str, ...], x_NMHD: torch.Tensor, hook: str, cfg: Any):
    """Train a crosscoder on in-memory activations into `out` (resumes; reuses a finished one).

    `out/trained_on.json` records everything the result depends on (crosscoder and trainer configs, a
    SHA-256 of the training activations); a folder trained (or half-trained) on anything else is
    retrained from scratch with a warning naming what changed, so a rerun with other settings never
    reports crosscoders that were trained with the old ones."""
    from featalign.activations.normalization import estimate_norm_scales
    from featalign.crosscoder import Crosscoder, InMemoryActivations, train_crosscoder
    from featalign.io import atomic_write_json, read_json

    out = Path(out)
    crosscoder_cfg, trainer_cfg = crosscoder_configs(models, hook, x_NMHD.shape[-1], len(x_NMHD), cfg)
    trained_on = jsonable(
        {
            "crosscoder": crosscoder_cfg.to_dict(),
            "trainer": trainer_cfg.to_dict(),
            "activations_sha256": activations_sha256(x_NMHD),
        }
    )
    if out.exists():
        old = read_json(out / TRAINED_ON_FILE) if (out / TRAINED_ON_FILE).exists() else {}
        if old == trained_on:
            if (out / "crosscoder.safetensors").exists():
                return Crosscoder.load(out).eval()
        else:
            changed = "; ".join(changed_settings(old, trained_on)[:8])
            warnings.warn(f"{out} was trained with other settings ({changed}); retraining it", stacklevel=2)
            shutil.rmtree(out)
    atomic_write_json(out / TRAINED_ON_FILE, trained_on)
    source = InMemoryActivations(
        x_NMHD,
        trainer_cfg.batch_size,
        seed=cfg.seed,
        models=models,
        hooks=(hook,),
        scales_MH=estimate_norm_scales(x_NMHD),
    )
    return train_crosscoder(crosscoder_cfg, trainer_cfg, source, out, progress=cfg.progress).eval()
