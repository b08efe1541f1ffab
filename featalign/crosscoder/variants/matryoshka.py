"""`matryoshka`: BatchTopK whose dictionary is a set of nested prefixes, each trained to reconstruct on
its own (Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning Multi-Level Features with Matryoshka
SAEs"; Nabeshima 2024). The loss is the mean over prefixes of the reconstruction error of
b_dec + sum of the selected latents *inside the prefix*, so the first latents must carry the most
general directions alone and later ones refine them instead of absorbing them. Selection, the
aux-k loss, the inference threshold and the sparse step are BatchTopK's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from featalign.crosscoder.variants.base import TrainOutput, help_field, register
from featalign.crosscoder.variants.batchtopk import BatchTopK, BatchTopKConfig, decode_selected


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    """BatchTopK's fields plus the nested prefixes."""

    prefix_fracs: tuple[float, ...] = help_field(
        (0.125, 0.25, 0.5, 1.0), "nested prefix sizes as fractions of n_latents, increasing, the last 1.0"
    )

    def validate(self, cc) -> None:
        super().validate(cc)
        self.prefix_fracs = tuple(float(p) for p in self.prefix_fracs)
        p = self.prefix_fracs
        if not p or p[-1] != 1.0 or any(not a < b for a, b in zip((0.0,) + p, p)):
            raise ValueError(f"prefix_fracs {p} must increase within (0, 1] and end with 1.0")
        if len(set(self.prefixes(cc.n_latents))) != len(p):
            raise ValueError(f"prefix_fracs {p} give empty or repeated prefixes at n_latents={cc.n_latents}")
        if not self.sparse_decode:
            raise ValueError("matryoshka trains through the sparse path only; leave sparse_decode true")

    def prefixes(self, n_latents: int) -> list[int]:
        """Prefix sizes in latents."""
        return [max(1, round(f * n_latents)) for f in self.prefix_fracs]


@register
class Matryoshka(BatchTopK):
    """BatchTopK with the mean prefix reconstruction loss; state and inference rule are BatchTopK's."""

    name = "matryoshka"
    Config = MatryoshkaConfig
    cfg: MatryoshkaConfig

    def training_forward(self, cc, x_BK: Tensor, sparsity_coef: float = 0.0) -> TrainOutput:
        sel = self.select(cc, x_BK)
        recon_P = []
        for p in self.cfg.prefixes(cc.cfg.n_latents):
            x_hat_BK = decode_selected(cc, sel, sel.cols < p)  # the last prefix is the whole dictionary
            recon_P.append((x_hat_BK.float() - x_BK.float()).pow(2).sum(-1).mean())
        recon = torch.stack(recon_P).mean()
        with torch.no_grad():
            pos = sel.vals > 0
            fired_L = torch.zeros(cc.cfg.n_latents, dtype=torch.bool, device=x_BK.device)
            fired_L[sel.cols[pos]] = True
            l0 = pos.sum().float() / x_BK.shape[0]
        parts = {f"recon_prefix{i}": r.detach() for i, r in enumerate(recon_P[:-1])}
        out = self._finish(cc, x_BK, x_hat_BK, recon, sel, fired_L, l0, parts)
        out.parts["recon"] = recon_P[-1].detach()  # the full dictionary's error, as the other variants log
        return out
