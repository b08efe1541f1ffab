"""Supervised training of the organisms (pretraining on the mixture, and SFT), resumable.

Every batch is a pure function of (seed, step) and the schedule is a function of step, so a
run resumed from a saved state ends bitwise equal to an uninterrupted one (on CPU).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
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
    prompts = tokenizer([p.prompt for p in problems])["input_ids"]  # each starts with <bos>
    answers = tokenizer([p.answer for p in problems], add_special_tokens=False)["input_ids"]
    for prompt, answer in zip(prompts, answers):
        seqs.append(prompt + answer + [tokenizer.eos_token_id])
        starts.append(len(prompt))
    ids, _ = pad_batch(seqs, tokenizer.pad_token_id, side="right")
    mask = torch.zeros(ids.shape, dtype=torch.float32)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        mask[i, st : len(s)] = 1.0  # positions whose token is a target
    return ids, mask


def pack_supervised(
    problems: list[Problem], tokenizer, width: int | None = None
) -> tuple[Int[Tensor, "R T"], Float[Tensor, "R T"], Int[Tensor, "R T"]]:
    """`encode_supervised`'s sequences packed several to a row: (ids, mask, position_ids).

    Most of a mixed batch is padding (short `cnt` prompts next to long `bool` ones), so each row holds
    several problems, placed first-fit in decreasing length into rows of `width` tokens (default, and at
    least: the longest problem; pretraining packs to the model's `max_len`, which holds ~4 problems);
    position ids restart at 0 with each problem, and `answer_loss` gives the model the block-diagonal causal
    mask of `packed_attention_mask`, so each problem attends within itself only: the loss and its gradient
    are the padded batch's (tests/organisms/test_train.py checks both) while the batch stays mixed. The
    placement is a pure function of the problems, so a resumed build packs every step identically.
    """
    ids_pad, mask_pad = encode_supervised(problems, tokenizer)
    lengths = (ids_pad != tokenizer.pad_token_id).sum(1).tolist()
    width = max(width or 0, ids_pad.shape[1])
    rows: list[list[int]] = []  # problem indices per row
    free: list[int] = []
    for i in sorted(range(len(problems)), key=lambda j: (-lengths[j], j)):
        r = next((r for r, f in enumerate(free) if f >= lengths[i]), len(rows))
        if r == len(rows):
            rows.append([])
            free.append(width)
        rows[r].append(i)
        free[r] -= lengths[i]
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=ids_pad.dtype)
    mask = torch.zeros((len(rows), width), dtype=mask_pad.dtype)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            n = lengths[i]
            ids[r, at : at + n], mask[r, at : at + n] = ids_pad[i, :n], mask_pad[i, :n]
            pos[r, at : at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)  # trailing pads: a sequence of their own, never a target
    return ids, mask, pos


def packed_attention_mask(position_ids_BT: Tensor, dtype: torch.dtype = torch.float32) -> Float[Tensor, "B 1 T T"]:
    """The additive 4D mask of packed rows: a query attends to the earlier keys of its own problem (a run of
    positions starting at 0), so each problem sees what it would see alone in a padded row."""
    seg = (position_ids_BT == 0).cumsum(-1)
    t = torch.arange(position_ids_BT.shape[1])
    allowed = (seg[:, :, None] == seg[:, None, :]) & (t[None, :, None] >= t[None, None, :])
    zero = torch.zeros((), dtype=dtype)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def answer_loss(
    model, ids_BT: Tensor, mask_BT: Tensor, position_ids_BT: Tensor | None = None, n_targets: float | None = None
) -> Tensor:
    """Mean cross-entropy over answer tokens (targets where mask is 1); `position_ids_BT` for packed rows
    (`pack_supervised`): with them the model attends within each packed problem only. `n_targets` divides
    the sum instead of these rows' own count: a shard's share of its whole batch's mean."""
    if position_ids_BT is None:
        # Right padding + causal attention: pads never influence earlier positions, so no mask.
        logits = model(input_ids=ids_BT, use_cache=False).logits[:, :-1]
    else:
        attn = packed_attention_mask(position_ids_BT)
        logits = model(input_ids=ids_BT, attention_mask=attn, position_ids=position_ids_BT, use_cache=False).logits
        logits = logits[:, :-1]
    tgt, m = ids_BT[:, 1:], mask_BT[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
    return (nll * m.reshape(-1)).sum() / (m.sum().clamp(min=1) if n_targets is None else n_targets)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on `n` torch threads, then restore the count: a build's float path, and so its bits,
    depend on the thread count, which the config fixes rather than the machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def shard_rows(batch: tuple[Tensor, ...], k: int, n_shards: int) -> tuple[Tensor, ...]:
    """Shard `k` of `n_shards` of a batch's rows (every n-th row: packed rows come longest first)."""
    return tuple(t[k::n_shards] for t in batch)


def flat_grad(model) -> Tensor:
    """Every parameter's gradient (zeros where none) as one vector, in `model.parameters()` order."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()])


def set_flat_grad(model, flat: Tensor) -> None:
    """The inverse of `flat_grad`: one vector back into the parameters' `.grad`."""
    at = 0
    for p in model.parameters():
        p.grad = flat[at : at + p.numel()].view_as(p).clone()
        at += p.numel()


def backward_of(model, loss_fn: Callable[[int], tuple[Tensor, dict]]) -> Callable[[int], tuple[float, dict]]:
    """A `run_steps` gradient function from a loss function: the step's loss, backpropagated."""

    def grad_fn(step: int) -> tuple[float, dict]:
        loss, info = loss_fn(step)
        model.zero_grad(set_to_none=True)
        loss.backward()
        return float(loss.detach()), info

    return grad_fn


def run_steps(
    model,
    grad_fn: Callable[[int], tuple[float, dict]],
    total_steps: int,
    peak_lr: float,
    warmup: int,
    state_path: Path,
    save_at: Callable[[int], bool],
    on_save: Callable[[int], None] | None = None,
    desc: str = "train",
    grad_clip: float = 1.0,
) -> list[dict]:
    """The one resumable training loop of the organisms: `grad_fn(step)` sets the parameters' gradients
    for that step and returns its loss (`backward_of(model, loss_fn)` for a plain loss).

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
        loss, info = grad_fn(step)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        info = {"step": step + 1, "loss": loss, **info}
        logs.append(info)
        bar.set_postfix({k: f"{v:.3g}" for k, v in info.items() if k != "step"})
        if save_at(step + 1):
            # Checkpoint first, state second: a kill in between redoes (identically) the steps.
            if on_save is not None:
                on_save(step + 1)
            save_state(state_path, model, opt, step + 1, logs)
    model.eval()
    return logs
