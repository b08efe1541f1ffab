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
