"""Final evaluation of a crosscoder: per-model FVU, L0, dead fraction (raw space), and the splice-in loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from featalign.crosscoder.data import check_finite

RULES = ("inference", "training")


@torch.no_grad()
def evaluate(crosscoder, x_NMHD: Tensor, batch: int = 4096, rule: str = "inference") -> dict:
    """FVU per model (over its hooks and dims), mean L0, and latents that never fire on `x_NMHD`.

    `rule="inference"` (default) uses `encode`, the per-token rule (BatchTopK's EMA threshold): the
    numbers a user encoding one token at a time gets. `rule="training"` uses the variant's training
    forward on batches of `batch` tokens (BatchTopK's batch top-k): the numbers the training log
    reports, comparable with them when `batch` is the training batch size; the gap between the two
    shows how well the inference rule stands in for the training one.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    cfg = crosscoder.cfg
    check_finite(x_NMHD, cfg.models, cfg.hooks, "evaluation activations")
    if len(x_NMHD) == 0:
        raise ValueError("no evaluation rows: pass at least one row of activations")
    M = cfg.n_models
    err = torch.zeros(M, dtype=torch.float64)
    sq = torch.zeros(M, dtype=torch.float64)
    s = torch.zeros(M, x_NMHD.shape[2] * x_NMHD.shape[3], dtype=torch.float64)
    fired = torch.zeros(cfg.n_latents, dtype=torch.bool)
    l0_sum, n = 0.0, 0
    was_training = crosscoder.training
    crosscoder.eval()
    try:
        for i in range(0, x_NMHD.shape[0], batch):
            x = x_NMHD[i : i + batch].float()
            if rule == "inference":
                f = crosscoder.encode(x)
                x_hat = crosscoder.decode(f)
                active = f > 0
                fired_b, l0_b = active.any(0), active.sum().item()
            else:
                out = crosscoder.training_forward(crosscoder.normalise(x))
                x_hat = (out.x_hat_BK.float() / crosscoder._scale_K()).view_as(x)
                fired_b = (out.fired_L() if callable(out.fired_L) else out.fired_L).cpu()
                l0_b = float(out.l0() if callable(out.l0) else out.l0) * x.shape[0]
            xv = x.reshape(x.shape[0], M, -1).double()
            err += (x_hat.reshape_as(xv).double() - xv).pow(2).sum((0, 2))
            sq += xv.pow(2).sum((0, 2))
            s += xv.sum(0)
            fired |= fired_b
            l0_sum += l0_b
            n += x.shape[0]
    finally:
        crosscoder.train(was_training)
    var = sq - s.pow(2).sum(-1) / n  # total variance around the per-dim mean
    fvu = (err / var).tolist()
    dead_eval = 1 - fired.float().mean().item()
    out = {
        "rule": rule,
        "l0": l0_sum / n,
        "dead_frac": dead_eval,
        "dead_frac_train": crosscoder.dead_mask().float().mean().item(),
        "n_tokens": n,
        "per_model": {name: {"fvu": fvu[m]} for m, name in enumerate(cfg.models)},
    }
    return out


def _organisms_eval_text(tokenizer, n_seqs: int, seed: int) -> tuple[Tensor, Tensor]:
    """`<bos> prompt answer <eos>` of every organisms domain (eval split) and its answer-target mask."""
    from featalign.organisms.tasks import DEFAULT_DOMAINS, sample_mixture
    from featalign.organisms.train import encode_supervised

    return encode_supervised(sample_mixture(list(DEFAULT_DOMAINS), n_seqs, "eval", seed), tokenizer)


@torch.no_grad()
def splice_in_loss(
    crosscoder,
    models: Mapping[str, Any],
    tokens_BT: Tensor | None = None,
    target_BT: Tensor | None = None,
    n_seqs: int = 256,
    seed: int = 0,
) -> dict[str, dict]:
    """Next-token loss of each model with its hook activations replaced by the crosscoder's reconstruction.

    `models` maps the crosscoder's model names (in order) to loaded bridges, folders or hub ids. Without
    `tokens_BT` the text is `n_seqs` organisms eval sequences and the loss is over answer tokens (the loss
    the organisms are trained on; their prompts' random operands are unpredictable by construction); with
    `tokens_BT` (right-padded) the loss is over `target_BT` (default: every real token after the first).
    Returns per model: clean, spliced and zero-ablated loss, and `loss_recovered` =
    (zero - spliced) / (zero - clean) (1 = perfect reconstruction, 0 = as bad as zeroing).
    Reconstructions come from all models' clean activations (the encoder is shared); padding and the
    first position (`<bos>`, an outlier crosscoders skip) keep their clean value.
    """
    from featalign.models import as_model, capture_models, edit_hooks, hf_model_of
    from featalign.organisms.train import answer_loss

    cfg = crosscoder.cfg
    if tuple(models) != tuple(cfg.models):
        raise ValueError(f"models {tuple(models)} must name the crosscoder's models {cfg.models} in order")
    loaded = [as_model(m) for m in models.values()]
    tok = loaded[0].tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else -1
    if tokens_BT is None:
        tokens_BT, target_BT = _organisms_eval_text(tok, n_seqs, seed)
    attn_BT = (tokens_BT != pad).long()
    if target_BT is None:
        target_BT = attn_BT.float()
        target_BT[:, 0] = 0
    keep_BT = attn_BT.bool()
    keep_BT[:, 0] = False
    acts_BTMHD = capture_models(loaded, tokens_BT, attn_BT, cfg.hooks)
    x_hat_NMHD = crosscoder(acts_BTMHD[keep_BT].to(crosscoder.W_dec.device)).cpu()
    out = {}
    for mi, (name, model) in enumerate(zip(cfg.models, loaded)):

        def loss_with(replacement_NHD: Tensor | None) -> float:
            def make(hi: int):
                def fn(act_BTD: Tensor) -> Tensor | None:
                    if replacement_NHD is None:
                        return None
                    act_BTD = act_BTD.clone()
                    act_BTD[keep_BT.to(act_BTD.device)] = replacement_NHD[:, hi].to(act_BTD)
                    return act_BTD

                return fn

            with edit_hooks(model, {h: make(hi) for hi, h in enumerate(cfg.hooks)}):
                dev = model.cfg.device
                return answer_loss(hf_model_of(model), tokens_BT.to(dev), target_BT.to(dev)).item()

        clean, spliced = loss_with(None), loss_with(x_hat_NMHD[:, mi])
        zero = loss_with(torch.zeros_like(x_hat_NMHD[:, mi]))
        out[name] = {
            "clean": clean,
            "spliced": spliced,
            "zero": zero,
            "loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else float("nan"),
        }
    return out
