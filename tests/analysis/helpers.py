"""Synthetic crosscoders with hand-set weights (exact, fast) for the analysis tests."""

from __future__ import annotations

import torch

from featalign.crosscoder import Crosscoder, CrosscoderConfig


def hand_crosscoder(dec_LMD: torch.Tensor, enc_LMD: torch.Tensor | None = None, models=None,
                    b_enc: torch.Tensor | None = None, hook: str = "h") -> Crosscoder:
    """An l1 crosscoder (one hook, norm_scale 1) with the given decoder (and encoder) vectors."""
    L, M, D = dec_LMD.shape
    models = tuple(models or [f"m{i}" for i in range(M)])
    cc = Crosscoder(CrosscoderConfig(models=models, hooks=(hook,), d_model=D, n_latents=L, variant="l1"))
    with torch.no_grad():
        cc.W_dec.copy_(dec_LMD.reshape(L, M * D))
        cc.W_enc.copy_((dec_LMD if enc_LMD is None else enc_LMD).reshape(L, M * D).t())
        cc.b_enc.zero_()
        if b_enc is not None:
            cc.b_enc.copy_(b_enc)
        cc.b_dec.zero_()
    return cc


def hook_layer(hook: str) -> int:
    """The block index of a `blocks.{L}.hook_resid_post` hook: Hugging Face's hidden_states[L + 1]."""
    parts = hook.split(".")
    assert parts[0] == "blocks" and parts[2] == "hook_resid_post", hook
    return int(parts[1])


@torch.no_grad()
def reference_last_token_latents(cc, model_dir, problems, model: str) -> torch.Tensor:
    """Reference for `sample_latents(..., positions="last")`: a plain Hugging Face forward of one prompt at a
    time (no padding, no featalign.models), its residual stream after the crosscoder's block at the last prompt
    token, encoded as `model`'s latents: [S, L]."""
    from featalign.organisms.model import load_organism

    hf, tok = load_organism(model_dir)
    layer = hook_layer(cc.cfg.hooks[0])
    # the block's own output from a forward hook: HF's last hidden state is after the final norm, so
    # hidden_states[layer + 1] is the block's output for every block but the last
    outs: list = []
    handle = hf.model.layers[layer].register_forward_hook(
        lambda mod, args, out: outs.append(out[0] if isinstance(out, tuple) else out))
    rows = []
    try:
        for p in problems:
            ids = torch.tensor([tok(p.prompt)["input_ids"]])
            hf(input_ids=ids)
            rows.append(outs.pop()[0, -1])
    finally:
        handle.remove()
    return cc.encode_as(torch.stack(rows)[:, None, :], model)


def reference_success_selection(cc, base_dir, rl_dir, tasks: dict, frac: float = 0.2, min_samples: int = 8) -> dict:
    """The RL-success selection written out as an explicit loop over tasks and latents, from
    `reference_last_token_latents`. `tasks`: {name: (problems, base_correct, rl_correct)}. Returns the success
    sample counts of the tasks used, the skipped task names, per-task scores and sets, their intersection and
    the latents selected in at least half of the tasks."""
    counts, per_task, scores = {}, {}, {}
    for name, (problems, base_ok, rl_ok) in tasks.items():
        wins = [i for i in range(len(problems)) if not base_ok[i] and rl_ok[i]]
        if len(wins) < min_samples:
            continue
        chosen = [problems[i] for i in wins]
        f_rl = reference_last_token_latents(cc, rl_dir, chosen, "rl")
        f_base = reference_last_token_latents(cc, base_dir, chosen, "base")
        score = [sum(float(f_rl[s, k] - f_base[s, k]) for s in range(len(wins))) / len(wins)
                 for k in range(cc.cfg.n_latents)]
        top = max(score)
        counts[name], scores[name] = len(wins), score
        per_task[name] = {k for k, v in enumerate(score) if top > 0 and v > frac * top}
    sets = list(per_task.values())
    inter = set.intersection(*sets) if sets else set()
    majority = {k for k in range(cc.cfg.n_latents) if sum(k in s for s in sets) >= (len(sets) + 1) // 2}
    return {"n_samples": counts, "skipped": sorted(set(tasks) - set(counts)), "scores": scores, "per_task": per_task,
            "features": sorted(inter), "majority": sorted(majority) if sets else []}


@torch.no_grad()
def reference_joint_drift(cc, x_NMHD: torch.Tensor, k: int, tol: float = 0.05, cos_min: float = 0.9, order=None):
    """Reference for `drift_joint` as a slow loop: (successive top-k overlaps, stabilisation checkpoint of each
    final top-k latent). Model 0 is the base, models 1..n the checkpoints (in `order`, 0-based checkpoint
    positions, when given); a latent is alive if it fires on any row of `x_NMHD`; at checkpoint t the alive
    latents are ranked by NRN s_t = ||d_t|| / (||d_0|| + ||d_t||) (ties: the larger ||d_t||); a latent has
    stabilised at the first checkpoint from which every later one has |s_t - s_n| <= tol and
    cos(d_t, d_n) >= cos_min."""
    W = cc.W_dec_LMHD.double().flatten(2)
    fired = (cc.encode(x_NMHD.float()) > 0).any(0)
    if order is not None:
        W = W[:, [0, *(o + 1 for o in order)]]
    L, M = W.shape[:2]
    norm = [[float(W[i, m].norm()) for m in range(M)] for i in range(L)]
    nrn = [[norm[i][t] / (norm[i][0] + norm[i][t]) for t in range(M)] for i in range(L)]
    alive = [i for i in range(L) if bool(fired[i])]
    tops = [sorted(alive, key=lambda i, t=t: (-nrn[i][t], -norm[i][t]))[:k] for t in range(1, M)]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(tops[:-1], tops[1:])]
    stabilisation = []
    for i in tops[-1]:
        ok = [abs(nrn[i][t] - nrn[i][M - 1]) <= tol
              and float(torch.dot(W[i, t], W[i, M - 1]) / (W[i, t].norm() * W[i, M - 1].norm())) >= cos_min
              for t in range(1, M)]
        first = len(ok)  # 1-based checkpoint from which all later ones are ok (the last one always is)
        while first > 1 and ok[first - 2]:
            first -= 1
        stabilisation.append(first)
    return overlap, stabilisation


@torch.no_grad()
def reference_pairwise_overlap(ccs, xs, k: int, match_cos: float = 0.7) -> list[float]:
    """Reference for `drift_pairwise`'s successive overlaps: per checkpoint t a (base, ckpt_t) crosscoder and the
    activations its latents must fire on to count; its top-k alive latents by NRN of the checkpoint side
    (ties: the larger norm); successive top-k decoders matched by brute force over every one-to-one assignment
    (the one with the largest total cosine), counting the pairs with cosine >= match_cos."""
    import itertools

    tops, vecs = [], []
    for cc, x in zip(ccs, xs):
        W = cc.W_dec_LMHD.double()
        L = W.shape[0]
        fired = (cc.encode(x.float()) > 0).any(0)
        norm = [(float(W[i, 0].flatten().norm()), float(W[i, 1].flatten().norm())) for i in range(L)]
        alive = [i for i in range(L) if bool(fired[i])]
        top = sorted(alive, key=lambda i: (-norm[i][1] / (norm[i][0] + norm[i][1]), -norm[i][1]))[:k]
        tops.append(top)
        vecs.append(W[top, 1].flatten(1))
    out = []
    for a, b in zip(vecs[:-1], vecs[1:]):
        cos = [[float(torch.dot(u, v) / (u.norm() * v.norm())) for v in b] for u in a]
        best = max(itertools.permutations(range(len(b))), key=lambda p: sum(cos[i][j] for i, j in enumerate(p)))
        out.append(sum(cos[i][j] >= match_cos for i, j in enumerate(best)) / k)
    return out


def mh_odds_ratio(strata) -> float:
    """Mantel-Haenszel common odds ratio of (base_correct, tuned_correct) strata, by hand:
    sum(a d / n) / sum(b c / n), a/b tuned correct/incorrect, c/d base correct/incorrect."""
    num = den = 0.0
    for base, tuned in strata:
        n = len(base) + len(tuned)
        num += tuned.sum() * (~base).sum() / n
        den += (~tuned).sum() * base.sum() / n
    return num / den
