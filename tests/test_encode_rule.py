"""The one rule for "model m's latents" (`Crosscoder.encode_as`): an explicit per-latent reference, and
the end-to-end promise that an ablation in a live model removes exactly what the selection scored."""

from __future__ import annotations

import pytest
import torch

from featalign.analysis.success_features import prompt_batch, sample_latents
from featalign.crosscoder import Crosscoder, CrosscoderConfig
from featalign.evaluation import eval_problems
from featalign.interventions import ablate, intervene
from featalign.models import hf_model_of
from featalign.models import edit_hooks, load_model

HOOK = "blocks.0.hook_resid_post"


def _with_tokenizer(bridge):
    return bridge, bridge.tokenizer


def _crosscoder(variant: str, D: int, L: int = 48) -> Crosscoder:
    vcfg = {"k": 4} if variant == "batchtopk" else {"init_threshold": 0.05} if variant == "jumprelu" else None
    cc = Crosscoder(CrosscoderConfig(models=("base", "rl", "sft"), hooks=(HOOK,), d_model=D, n_latents=L,
                                     variant=variant, variant_cfg=vcfg, dec_init_norm=0.3, seed=4))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        cc.W_enc.add_(0.2 * torch.randn(cc.W_enc.shape, generator=g))  # the models' encoder rows differ
        cc.b_enc.copy_(0.05 * torch.randn(L, generator=g))
        cc.b_dec.copy_(0.2 * torch.randn(cc.b_dec.shape, generator=g))
        cc.norm_scale.copy_(torch.tensor([[0.6], [1.7], [1.1]]))
        if variant == "batchtopk":
            cc.variant.threshold.fill_(0.02)
    return cc


def _explicit(cc: Crosscoder, x_ND: torch.Tensor, m: int) -> torch.Tensor:
    """Slow reference of the rule, latent by latent: every model slot holds m's normalised activation."""
    c = cc.cfg
    D, L = c.d_model, c.n_latents
    s = float(cc.norm_scale[m, 0])
    out = torch.zeros(x_ND.shape[0], L)
    for l in range(L):
        pre = cc.b_enc[l] + sum((x_ND * s) @ cc.W_enc[j * D : (j + 1) * D, l] for j in range(c.n_models))
        if c.variant == "l1":
            f = pre.clamp_min(0)
        elif c.variant == "jumprelu":
            f = pre * (pre > cc.variant.log_threshold[l].exp())
        else:
            w = sum(cc.W_dec[l, j * D : (j + 1) * D].norm() for j in range(c.n_models))
            f = pre.clamp_min(0) * (pre.clamp_min(0) * w > cc.variant.threshold)
        out[:, l] = f
    return out


@pytest.mark.parametrize("variant", ["l1", "batchtopk", "jumprelu"])
def test_encode_as_matches_explicit_rule(variant):
    cc = _crosscoder(variant, 8)
    x = 2 * torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in range(3):
            ref = _explicit(cc, x, m)
            assert (ref > 0).any() and (ref == 0).any()
            torch.testing.assert_close(cc.encode_as(x, m), ref, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(cc.encode_as(x[:, None], cc.cfg.models[m], latents=[3, 0, 9]), ref[:, [3, 0, 9]],
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["l1", "batchtopk"])
def test_ablation_in_live_model_removes_exactly_the_scored_contribution(tiny_organisms, variant):
    """Score_k reads `sample_latents` (f_k at the last prompt token, per sample); ablating a selected set
    in the running RL model must change its residual stream there by exactly -sum_k f_k d_k."""
    model, tok = _with_tokenizer(load_model(tiny_organisms.model_dir("rl")))
    cc = _crosscoder(variant, model.cfg.d_model)
    problems = eval_problems("sort", 6)
    with torch.no_grad():
        scored = sample_latents(cc, model, tok, problems, 1, "last")  # [S, L], what Score_k averages
        sel = [k for k in scored.abs().sum(0).argsort(descending=True)[:6].tolist()]
        assert (scored[:, sel] > 0).sum() >= 6
        ids, _, last = prompt_batch(tok, problems)
        got = {}
        with edit_hooks(model, {HOOK: lambda r: got.__setitem__("clean", r.clone())}):
            hf_model_of(model)(input_ids=ids)
        with intervene(model, cc, "rl", ablate(sel)):
            with edit_hooks(model, {HOOK: lambda r: got.__setitem__("edited", r.clone())}):
                hf_model_of(model)(input_ids=ids)
        rows = torch.arange(len(problems))
        delta = got["edited"][rows, last] - got["clean"][rows, last]
        d_SD = cc.W_dec_raw_LMHD[sel, 1, 0]
        torch.testing.assert_close(delta, -scored[:, sel] @ d_SD, rtol=1e-4, atol=1e-5)
        # and the scored latents are the rule's: an explicit per-latent computation on the same activations
        torch.testing.assert_close(scored, _explicit(cc, got["clean"][rows, last], 1), rtol=1e-4, atol=1e-5)
