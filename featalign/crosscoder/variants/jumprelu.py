"""`jumprelu`: f = pre · H(pre - θ) with a learned per-latent threshold θ and an L0 penalty, trained
with straight-through (rectangle-kernel) gradients for θ (Rajamanoharan et al. 2024)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from featalign.crosscoder.variants.base import TrainOutput, Variant, VariantConfig, help_field, register


@dataclass
class JumpReLUConfig(VariantConfig):
    """The threshold's start and its estimator (the L0 weight is the trainer's `sparsity_coef`)."""

    init_threshold: float = help_field(1.0, "initial threshold θ, in normalised space (mean input norm sqrt(d_model))")
    bandwidth: float = help_field(0.2, "bandwidth of the straight-through estimator's rectangle kernel")

    def validate(self, cc) -> None:
        if not (self.init_threshold > 0 and self.bandwidth > 0):
            raise ValueError(
                f"jumprelu init_threshold ({self.init_threshold}) and bandwidth ({self.bandwidth}) must be > 0"
            )


def _rect(z: Tensor) -> Tensor:
    return (z.abs() < 0.5).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    """f = pre·H(pre - θ); straight-through (rectangle-kernel) gradient for θ (Rajamanoharan et al. 2024)."""

    @staticmethod
    def forward(ctx, pre_BL, theta_L, eps: float):
        ctx.save_for_backward(pre_BL, theta_L)
        ctx.eps = eps
        return pre_BL * (pre_BL > theta_L)

    @staticmethod
    def backward(ctx, g_BL):
        pre_BL, theta_L = ctx.saved_tensors
        eps = ctx.eps
        g_pre = g_BL * (pre_BL > theta_L)
        g_theta = (-(theta_L / eps) * _rect((pre_BL - theta_L) / eps) * g_BL).sum(0)
        return g_pre, g_theta, None


class _Step(torch.autograd.Function):
    """H(pre - θ) with the straight-through gradient for θ (for the L0 penalty)."""

    @staticmethod
    def forward(ctx, pre_BL, theta_L, eps: float):
        ctx.save_for_backward(pre_BL, theta_L)
        ctx.eps = eps
        return (pre_BL > theta_L).to(pre_BL.dtype)

    @staticmethod
    def backward(ctx, g_BL):
        pre_BL, theta_L = ctx.saved_tensors
        eps = ctx.eps
        g_theta = (-(1.0 / eps) * _rect((pre_BL - theta_L) / eps) * g_BL).sum(0)
        return None, g_theta, None


@register
class JumpReLU(Variant):
    """State: the learned `log_threshold` [L] (θ = exp, so it stays positive)."""

    name = "jumprelu"
    Config = JumpReLUConfig
    cfg: JumpReLUConfig

    def __init__(self, cc_cfg, cfg: JumpReLUConfig):
        super().__init__(cc_cfg, cfg)
        self.log_threshold = nn.Parameter(torch.full((cc_cfg.n_latents,), math.log(cfg.init_threshold)))

    def activation_for(self, cc, latents: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        theta = self.log_threshold.exp()
        theta = theta if latents is None else theta[latents]
        return lambda pre_BS: pre_BS * (pre_BS > theta)

    def jumprelu_threshold(self, cc) -> Tensor:
        # θ = exp(...) >= 0, so pre · H(pre − θ) = relu(pre) · H(pre − θ): sae_lens' rule exactly
        return self.log_threshold.detach().exp()

    def training_forward(self, cc, x_BK: Tensor, sparsity_coef: float) -> TrainOutput:
        pre_BL = torch.addmm(cc.b_enc, x_BK, cc.W_enc)
        theta_L = self.log_threshold.exp()
        eps = self.cfg.bandwidth
        f_BL = _JumpReLU.apply(pre_BL, theta_L.to(pre_BL.dtype), eps)
        sparsity = _Step.apply(pre_BL, theta_L.to(pre_BL.dtype), eps).sum(-1).mean()
        x_hat_BK = torch.addmm(cc.b_dec, f_BL, cc.W_dec)
        recon = (x_hat_BK.float() - x_BK.float()).pow(2).sum(-1).mean()
        loss = recon + sparsity_coef * sparsity.float()
        with torch.no_grad():
            n_active_L = torch.count_nonzero(f_BL, dim=0)  # one pass for both firing and L0
            fired_L, l0 = n_active_L > 0, n_active_L.sum().float() / f_BL.shape[0]
        return TrainOutput(
            loss, {"recon": recon.detach(), "sparsity": sparsity.detach().float()}, x_hat_BK, fired_L, l0
        )
