"""Which model does each latent belong to: decoder-norm shares, pairwise relative norm and cosine,
encoder-side statistics, classes, and Latent Scaling (Minder et al. 2025) to flag L1 artifacts.

All decoder quantities are read in the crosscoder's *normalised* space (each (model, hook) block
scaled to mean norm sqrt(D)), so a model with larger raw activations does not win by scale alone.
A latent's per-model decoder vector is its `[H, D]` block flattened (one norm over all hooks).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from featalign.config import JsonConfig
from featalign.crosscoder.data import check_finite


@dataclass
class AttributionConfig(JsonConfig):
    """Class thresholds on r_m = n_m / max_m' n_m' (the latent's decoder norm in model m relative to its largest).

    absent_ratio 1/9 makes the 2-model case the usual NRN thresholds: r_base < 1/9 <=> NRN > 0.9.
    shared_ratio 2/3 <=> NRN in [0.4, 0.6] for two models.
    """

    absent_ratio: float = 1 / 9  # model m does not carry the latent if r_m < absent_ratio
    shared_ratio: float = 2 / 3  # "shared": every model has r_m >= shared_ratio
    min_firing_rate: float = 0.0  # latents firing on <= this fraction of tokens are "dead" (not classified)
    ls_error_threshold: float = 0.3  # Latent Scaling: nu_error above this -> complete-shrinkage artifact
    ls_recon_threshold: float = 0.5  # Latent Scaling: nu_recon above this -> latent-decoupling artifact

    def __post_init__(self) -> None:
        if not 0 < self.absent_ratio < self.shared_ratio <= 1:
            raise ValueError(f"need 0 < absent_ratio ({self.absent_ratio}) < shared_ratio ({self.shared_ratio}) <= 1")


# --- decoder geometry ----------------------------------------------------------------------------


def decoder_vectors(cc) -> Float[Tensor, "L M K"]:
    """Per-model decoder vectors, hooks flattened: `[L, M, H*D]` (normalised space)."""
    W = cc.W_dec_LMHD.detach().float()
    return W.reshape(W.shape[0], W.shape[1], -1)


def decoder_norms(cc) -> Float[Tensor, "L M"]:
    """||d_{l,m}|| over all of model m's hooks."""
    return decoder_vectors(cc).norm(dim=-1)


def model_attribution_scores(norms_LM: Tensor) -> Float[Tensor, "L M"]:
    """MAS_{l,m} = n_{l,m} / sum_m' n_{l,m'}: decoder-norm shares summing to 1 per latent."""
    return norms_LM / norms_LM.sum(-1, keepdim=True).clamp_min(1e-12)


def relative_norm(norms_LM: Tensor, o: int, t: int) -> Float[Tensor, " L"]:
    """Normalized Relative Norm NRN = n_t / (n_o + n_t): 1 = only in t, 0 = only in o, 0.5 = equal."""
    return norms_LM[:, t] / (norms_LM[:, o] + norms_LM[:, t]).clamp_min(1e-12)


def decoder_cosine(dec_LMK: Tensor, a: int, b: int) -> Float[Tensor, " L"]:
    """Cosine between a latent's decoder vectors in models a and b (0 where either is zero)."""
    return torch.nn.functional.cosine_similarity(dec_LMK[:, a], dec_LMK[:, b], dim=-1, eps=1e-12)


def classify(
    norms_LM: Tensor,
    models: tuple[str, ...],
    cfg: AttributionConfig | None = None,
    alive_L: Tensor | None = None,
) -> list[str]:
    """One class per latent: 'shared', '<m>-only', '<a>+<b>' (pair-only, N >= 3), 'mixed', or 'dead'.

    r_m = n_m / max n. Absent: r_m < absent_ratio. 'shared': all r_m >= shared_ratio. One model
    present -> '<m>-only'; a proper subset of >= 2 present -> the names joined by '+'; all present
    but not all strong -> 'mixed'.
    """
    cfg = cfg or AttributionConfig()
    r_LM = norms_LM / norms_LM.max(-1, keepdim=True).values.clamp_min(1e-12)
    present = (r_LM >= cfg.absent_ratio).numpy()
    strong = (r_LM >= cfg.shared_ratio).numpy()
    dead = np.zeros(len(r_LM), bool) if alive_L is None else ~alive_L.numpy().astype(bool)
    dead |= norms_LM.max(-1).values.numpy() <= 0
    out = []
    M = len(models)
    for lat in range(len(r_LM)):
        if dead[lat]:
            out.append("dead")
        elif strong[lat].all():
            out.append("shared")
        elif present[lat].sum() == 1:
            out.append(f"{models[int(present[lat].argmax())]}-only")
        elif present[lat].sum() < M:
            out.append("+".join(m for m, p in zip(models, present[lat]) if p))
        else:
            out.append("mixed")
    return out


def class_counts(classes: list[str]) -> dict[str, int]:
    """How many latents fall in each class (sorted by name): the numbers a report compares with its controls."""
    return {c: classes.count(c) for c in sorted(set(classes))}


# --- data-side statistics ------------------------------------------------------------------------


@torch.no_grad()
def latent_activations(cc, x_NMHD: Tensor, batch: int = 4096) -> Float[Tensor, "N L"]:
    """`cc.encode` over a large tensor in batches (the inference rule)."""
    return torch.cat([cc.encode(x_NMHD[i : i + batch].float()) for i in range(0, len(x_NMHD), batch)])


@torch.no_grad()
def encoder_stats(
    cc, x_NMHD: Tensor | None = None, batch: int = 4096, model: str | int | None = None
) -> dict[str, Tensor]:
    """Encoder-side view of each latent.

    enc_share [L, M]: share of the encoder vector's norm reading from model m (which model's
    activations make the latent fire); enc_dec_cos [L, M]: cosine of model m's encoder and decoder
    blocks; with data: firing_rate [L], mean_act (mean activation when firing) [L], max_act [L], of
    the joint encoding of the paired tokens, or with `model` of that model's latents
    (`cc.encode_as`, the rule interventions edit with: use these to match random controls to an edit
    in that model), and then mean_recon_norm [L]: mean_act x the norm of model m's decoder block, the size
    of what the latent writes into that model when it fires (what an ablation removes).
    """
    c = cc.cfg
    W_enc_LMK = cc.W_enc.detach().float().t().reshape(c.n_latents, c.n_models, -1)
    enc_n = W_enc_LMK.norm(dim=-1)
    out = {
        "enc_share": enc_n / enc_n.sum(-1, keepdim=True).clamp_min(1e-12),
        "enc_dec_cos": torch.nn.functional.cosine_similarity(W_enc_LMK, decoder_vectors(cc), dim=-1, eps=1e-12),
    }
    if x_NMHD is not None:
        fired = torch.zeros(c.n_latents, dtype=torch.float64)
        total = torch.zeros(c.n_latents, dtype=torch.float64)
        mx = torch.zeros(c.n_latents)
        for i in range(0, len(x_NMHD), batch):
            x = x_NMHD[i : i + batch].float()
            f = cc.encode(x) if model is None else cc.encode_as(x[:, cc.model_index(model)], model)
            fired += (f > 0).sum(0)
            total += f.sum(0)
            mx = torch.maximum(mx, f.max(0).values)
        out |= {
            "firing_rate": (fired / len(x_NMHD)).float(),
            "mean_act": (total / fired.clamp_min(1)).float(),
            "max_act": mx,
        }
        if model is not None:
            out["mean_recon_norm"] = out["mean_act"] * decoder_norms(cc)[:, cc.model_index(model)]
    return out


# --- Latent Scaling --------------------------------------------------------------------------------


@dataclass
class LatentScaling:
    """Closed-form betas of each latent's owner decoder direction against each model's targets.

    beta_recon[l, m]: fit of f_l * u_l to model m's reconstruction x_hat_m;
    beta_error[l, m]: fit to model m's error with latent l's own part added back,
    x_m - x_hat_m + f_l d_{l,m} (for the owner both are ~1 for a clean latent).
    nu_* = beta_*[:, m] / beta_*[:, owner].
    """

    owner_L: Tensor
    beta_recon_LM: Tensor
    beta_error_LM: Tensor
    nu_recon_LM: Tensor
    nu_error_LM: Tensor


@torch.no_grad()
def latent_scaling(cc, x_NMHD: Tensor, owner_L: Tensor | None = None, batch: int = 4096) -> LatentScaling:
    """Latent Scaling (Minder, Dumas et al. 2025) for every latent, in normalised space.

    For latent l with direction u = d_{l,owner} (owner = the model with the largest decoder norm
    unless given) and a target y_m(x), beta = sum_x f_l(x) <u, y_m(x)> / (||u||^2 sum_x f_l(x)^2),
    the least-squares scale of f_l u against y_m. Targets: model m's reconstruction x_hat_m, and its
    error with the latent's own term added back, x_m - x_hat_m + f_l d_{l,m}. A latent that looks specific to the
    owner but whose direction the other model's *error* still carries (nu_error ~ 1) exists only
    because L1 shrank its other decoder to zero (complete shrinkage); a high nu_recon means other
    latents reconstruct it there (latent decoupling).
    """
    dec_LMK = decoder_vectors(cc)
    L, M, Km = dec_LMK.shape
    if owner_L is None:
        owner_L = dec_LMK.norm(dim=-1).argmax(-1)
    u_LK = dec_LMK[torch.arange(L), owner_L]  # [L, Km]
    G_LM = torch.einsum("lk,lmk->lm", u_LK, dec_LMK)  # <u_l, d_{l,m}>
    A = torch.zeros(L, M, dtype=torch.float64)  # sum f <u, x_m>
    R = torch.zeros(L, M, dtype=torch.float64)  # sum f <u, x_hat_m>
    S = torch.zeros(L, dtype=torch.float64)  # sum f^2
    for i in range(0, len(x_NMHD), batch):
        x_BK = cc.normalise(x_NMHD[i : i + batch].float())
        f_BL = cc.encode_normalised(x_BK)
        xh_BK = torch.addmm(cc.b_dec, f_BL, cc.W_dec)
        S += f_BL.double().pow(2).sum(0)
        for m in range(M):
            xs = slice(m * Km, (m + 1) * Km)
            A[:, m] += (f_BL * (x_BK[:, xs] @ u_LK.t())).sum(0).double()
            R[:, m] += (f_BL * (xh_BK[:, xs] @ u_LK.t())).sum(0).double()
    denom = (u_LK.double().pow(2).sum(-1) * S)[:, None]
    SG = S[:, None] * G_LM.double()
    with np.errstate(divide="ignore", invalid="ignore"):
        b_rec = (R / denom).float()
        b_err = ((A - R + SG) / denom).float()
    own = lambda b: b[torch.arange(L), owner_L][:, None]  # noqa: E731
    return LatentScaling(owner_L, b_rec, b_err, b_rec / own(b_rec), b_err / own(b_err))


def latent_scaling_flags(ls: LatentScaling, norms_LM: Tensor, cfg: AttributionConfig | None = None) -> Tensor:
    """bool [L]: latent looks specific (some model absent by norm) but Latent Scaling finds it in an absent model."""
    cfg = cfg or AttributionConfig()
    r_LM = norms_LM / norms_LM.max(-1, keepdim=True).values.clamp_min(1e-12)
    absent = r_LM < cfg.absent_ratio
    bad = (torch.nan_to_num(ls.nu_error_LM, nan=0.0) > cfg.ls_error_threshold) | (
        torch.nan_to_num(ls.nu_recon_LM, nan=0.0) > cfg.ls_recon_threshold
    )
    return (absent & bad).any(-1)


# --- everything for one crosscoder ------------------------------------------------------------------


@dataclass
class Attribution:
    """Per-latent attribution of one crosscoder (arrays indexed by latent)."""

    models: tuple[str, ...]
    norms_LM: Tensor
    mas_LM: Tensor
    nrn: dict[str, Tensor]  # "o|t" -> NRN with o as the reference and t as the tuned model
    cosine: dict[str, Tensor]  # "a|b" -> decoder cosine
    classes: list[str]
    enc: dict[str, Tensor] = field(default_factory=dict)
    ls: LatentScaling | None = None
    artifact_L: Tensor | None = None
    classes_ls: list[str] | None = None  # classes with Latent-Scaling artifacts relabelled '<class>?artifact'

    def counts(self, after_ls: bool = False) -> dict[str, int]:
        return class_counts(self.classes_ls if after_ls and self.classes_ls is not None else self.classes)

    def summary(self) -> dict:
        d = {"models": list(self.models), "n_latents": len(self.classes), "class_counts": self.counts()}
        if self.classes_ls is not None:
            assert self.artifact_L is not None  # `attribute` sets ls, artifact_L and classes_ls together
            d["class_counts_after_latent_scaling"] = self.counts(after_ls=True)
            d["n_artifacts"] = int(self.artifact_L.sum())
        return d

    def latent(self, lat: int) -> dict:
        """Every number about latent `lat` (for feature cards and JSON)."""
        d = {
            "latent": lat,
            "class": self.classes[lat],
            "norms": dict(zip(self.models, self.norms_LM[lat].tolist())),
            "mas": dict(zip(self.models, self.mas_LM[lat].tolist())),
            "nrn": {k: float(v[lat]) for k, v in self.nrn.items()},
            "cosine": {k: float(v[lat]) for k, v in self.cosine.items()},
        }
        for k, v in self.enc.items():
            d[k] = dict(zip(self.models, v[lat].tolist())) if v.ndim == 2 else float(v[lat])
        if self.ls is not None:
            assert self.artifact_L is not None  # `attribute` sets ls, artifact_L and classes_ls together
            d["latent_scaling"] = {
                "owner": self.models[int(self.ls.owner_L[lat])],
                **{
                    f"{k}": dict(zip(self.models, getattr(self.ls, k + "_LM")[lat].tolist()))
                    for k in ("beta_recon", "beta_error", "nu_recon", "nu_error")
                },
                "artifact": bool(self.artifact_L[lat]),
            }
        return d


def attribute(cc, x_NMHD: Tensor | None = None, cfg: AttributionConfig | None = None, batch: int = 4096) -> Attribution:
    """MAS, pairwise NRN / cosine, classes; with activations also encoder/firing stats and Latent Scaling.

    `x_NMHD` (raw activations of the crosscoder's models, in its model order) should be held-out
    data; latents that never fire on it are classed 'dead'.
    """
    cfg = cfg or AttributionConfig()
    if x_NMHD is not None:
        check_activations(cc, x_NMHD)
    dec = decoder_vectors(cc)
    norms = dec.norm(dim=-1)
    models = tuple(cc.cfg.models)
    nrn, cos = {}, {}
    for a, b in itertools.combinations(range(len(models)), 2):
        nrn[f"{models[a]}|{models[b]}"] = relative_norm(norms, a, b)
        cos[f"{models[a]}|{models[b]}"] = decoder_cosine(dec, a, b)
    enc = encoder_stats(cc, x_NMHD, batch)
    alive = enc["firing_rate"] > cfg.min_firing_rate if "firing_rate" in enc else None
    classes = classify(norms, models, cfg, alive)
    att = Attribution(models, norms, model_attribution_scores(norms), nrn, cos, classes, enc)
    if x_NMHD is not None:
        att.ls = latent_scaling(cc, x_NMHD, batch=batch)
        att.artifact_L = latent_scaling_flags(att.ls, norms, cfg)
        att.classes_ls = [c + "?artifact" if a and c != "dead" else c for c, a in zip(classes, att.artifact_L.tolist())]
    return att


def check_activations(cc, x_NMHD: Tensor, names: tuple[str, ...] | None = None) -> None:
    """Refuse activations (or model names) that do not match the crosscoder, naming what differs."""
    c = cc.cfg
    if names is not None and tuple(names) != tuple(c.models):
        raise ValueError(
            f"the crosscoder was trained on models {c.models} (in that order) but got {tuple(names)}; "
            "pass the models the crosscoder was trained on, in its order"
        )
    want = (c.n_models, c.n_hooks, c.d_model)
    if x_NMHD.ndim != 4 or tuple(x_NMHD.shape[1:]) != want:
        raise ValueError(
            f"activations of shape {list(x_NMHD.shape)} do not match the crosscoder "
            f"[N, {want[0]}, {want[1]}, {want[2]}] (models {c.models}, hooks {c.hooks}); "
            "cache the same models at the same hooks (and the same d_model)"
        )
    check_finite(x_NMHD, c.models, c.hooks)
