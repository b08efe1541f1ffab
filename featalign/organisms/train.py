"""Supervised training of the organisms (pretraining on the mixture, and SFT), resumable.

Every batch is a pure function of (seed, step) and the schedule is a function of step, so a
run resumed from a saved state ends bitwise equal to an uninterrupted one (on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from featalign.generation import pad_batch
from featalign.io import atomic_write_bytes, canonical_for_pickle
from featalign.organisms.tasks import Problem


def encode_supervised(problems: list[Problem], tokenizer) -> tuple[Int[Tensor, "B T"], Float[Tensor, "B T"]]:
    """Right-padded `<bos> prompt answer <eos>` ids and a mask that is 1 on answer and <eos> targets.

    The mask is aligned with the *targets* `ids[:, 1:]` (shape [B, T-1] after shifting by the caller).
    """
    seqs, starts = [], []
    for p in problems:
        prompt = tokenizer(p.prompt)["input_ids"]  # starts with <bos>
        answer = tokenizer(p.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seqs.append(prompt + answer)
        starts.append(len(prompt))
    ids, _ = pad_batch(seqs, tokenizer.pad_token_id, side="right")
    mask = torch.zeros(ids.shape, dtype=torch.float32)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        mask[i, st : len(s)] = 1.0  # positions whose token is a target
    return ids, mask


def answer_loss(model, ids_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """Mean cross-entropy over answer tokens (targets where mask is 1)."""
    # Right padding + causal attention: pads never influence earlier positions, so no mask.
    logits = model(input_ids=ids_BT).logits[:, :-1]
    tgt, m = ids_BT[:, 1:], mask_BT[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
    return (nll * m.reshape(-1)).sum() / m.sum().clamp(min=1)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def save_state(path: Path, model, opt, step: int, logs: list[dict] | None = None) -> None:
    """Atomically save weights, optimizer state, step and the log rows so far, so a killed build resumes
    exactly and its log is the uninterrupted run's."""
    import io

    buf = io.BytesIO()
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "logs": list(logs or [])}
    torch.save(canonical_for_pickle(state), buf)  # a resumed build writes the uninterrupted build's bytes
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path, model, opt) -> tuple[int, list[dict]]:
    """Restore what `save_state` wrote; returns the step to continue from and the log rows up to it."""
    st = torch.load(path, weights_only=False)
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    return int(st["step"]), list(st.get("logs", []))


def make_optimizer(model, lr: float) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.98, no weight decay), the optimizer of every organisms training stage."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)


def run_steps(
    model,
    loss_fn: Callable[[int], tuple[Tensor, dict]],
    total_steps: int,
    peak_lr: float,
    warmup: int,
    state_path: Path,
    save_at: Callable[[int], bool],
    on_save: Callable[[int], None] | None = None,
    desc: str = "train",
    grad_clip: float = 1.0,
) -> list[dict]:
    """The one resumable training loop of the organisms: `loss_fn(step)` builds that step's loss.

    At every step where `save_at(step + 1)` holds, `on_save(step + 1)` runs (e.g. writes an HF
    checkpoint) and the training state is written atomically. A rerun continues from the last state.
    Returns the log rows of every step, including those run before a resume.
    """
    opt = make_optimizer(model, peak_lr)
    start, logs = load_state(state_path, model, opt) if state_path.exists() else (0, [])
    model.train()
    bar = tqdm(range(start, total_steps), desc=desc, initial=start, total=total_steps, leave=False)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total_steps, peak_lr, warmup)
        loss, info = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        info = {"step": step + 1, "loss": float(loss.detach()), **info}
        logs.append(info)
        bar.set_postfix({k: f"{v:.3g}" for k, v in info.items() if k != "step"})
        if save_at(step + 1):
            # Checkpoint first, state second: a kill in between redoes (identically) the steps.
            if on_save is not None:
                on_save(step + 1)
            save_state(state_path, model, opt, step + 1, logs)
    model.eval()
    return logs
