"""Export one model's slice of a crosscoder as an SAE that sae_lens loads (`SAE.load_from_disk`).

Tools built on sae_lens (SAEBench, sae-dashboard, sae_lens' own `HookedSAETransformer` and evals) take
a single-model SAE: `encode(x)` on one model's raw activations at one hook, `decode(f)` back to them.
"Model m's features" has one rule in featalign, `Crosscoder.encode_as(x, m, hook)` (docs/crosscoder.md,
"Reading one model's latents"), so the exported SAE computes exactly that:

* encoder: `W_enc = s_{m,h} · Σ_j W_enc[j, h]` [D, L] (every model's encoder rows at hook h summed, model
  m's normalisation scale folded in, so it reads raw activations), `b_enc` the crosscoder's; other
  hooks of a multi-hook crosscoder count as zero, as in `encode_as(x, m, hook=h)`;
* activation: the variant's inference rule in sae_lens' terms (`Variant.jumprelu_threshold`): `l1` is
  ReLU (architecture `standard`); `jumprelu` is sae_lens' JumpReLU with θ = exp(log_threshold);
  `batchtopk` / `matryoshka` keep `relu(pre)` where `relu(pre) · Σ||W_dec[l]|| > t`, which is a JumpReLU
  with the per-latent threshold θ_l = t / Σ||W_dec[l]|| (the batch top-k is a training rule only);
* decoder: model m's decoder rows at hook h and its decoder bias, in raw space (`W_dec_raw_LMHD[:, m, h]`,
  `b_dec_raw_MHD[m, h]`), so `decode(f)` is `Crosscoder.decode(f)[:, m, h]`.

`apply_b_dec_to_input` is false (the crosscoder's encoder does not subtract the decoder bias) and
`normalize_activations` is `none` (the scale is in the weights). CLI:

    python -m featalign.crosscoder.export CROSSCODER_DIR --model rl --out runs/sae_rl [--hook H] [--model-id ID]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from featalign.cli import UsageError, check_exists, check_out_dir, run_cli
from featalign.crosscoder.model import CFG_FILE, Crosscoder
from featalign.io import atomic_write_bytes, atomic_write_json, provenance, safetensors_bytes

if TYPE_CHECKING:
    from sae_lens import SAE

__all__ = ["export_sae_lens", "to_sae_lens"]

PROG = "python -m featalign.crosscoder.export"


def _hook_index(cc: Crosscoder, hook: str | int | None) -> int:
    hooks = cc.cfg.hooks
    if hook is None:
        if len(hooks) > 1:
            raise UsageError(f"the crosscoder has several hooks {hooks}: name the one to export (--hook)")
        return 0
    if isinstance(hook, int) and not isinstance(hook, bool) and 0 <= hook < len(hooks):
        return hook
    if hook in hooks:
        return hooks.index(hook)
    raise UsageError(f"hook {hook!r} is not one of the crosscoder's hooks {hooks}")


@torch.no_grad()
def to_sae_lens(cc: Crosscoder, model: str | int, hook: str | int | None = None, model_id: str | None = None) -> SAE:
    """Model `model`'s slice of `cc` at `hook` (the only hook by default) as an in-memory sae_lens SAE.

    `sae.encode(x_BD)` equals `cc.encode_as(x_BD, model, hook)` and `sae.decode(f_BL)` equals
    `cc.decode(f_BL)[:, m, h]` (raw activations in and out). `model_id` goes into the SAE's
    `metadata.model_name` (what sae-dashboard / SAEBench pass to `HookedTransformer.from_pretrained`; by
    default the crosscoder's own model name); `metadata.hook_name` is the crosscoder's hook.
    """
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    c = cc.cfg
    try:
        m = cc.model_index(model)
    except ValueError as e:
        raise UsageError(str(e)) from None
    h = _hook_index(cc, hook)
    theta_L = cc.variant.jumprelu_threshold(cc)
    W_enc_MHDL = cc.W_enc.detach().view(c.n_models, c.n_hooks, c.d_model, c.n_latents)
    tensors = {
        "W_enc": W_enc_MHDL[:, h].sum(0) * cc.norm_scale[m, h],  # [D, L], m's scale folded in
        "b_enc": cc.b_enc.detach(),
        "W_dec": cc.W_dec_raw_LMHD.detach()[:, m, h],  # [L, D]
        "b_dec": cc.b_dec_raw_MHD.detach()[m, h],  # [D]
    }
    if theta_L is not None:
        tensors["threshold"] = theta_L
    dtype = str(cc.W_enc.dtype).removeprefix("torch.")
    meta = SAEMetadata(
        model_name=model_id or c.models[m],
        hook_name=c.hooks[h],
        hook_head_index=None,
        featalign={
            "crosscoder_model": c.models[m],
            "crosscoder_models": list(c.models),
            "variant": c.variant,
            "rule": f"Crosscoder.encode_as(x, {c.models[m]!r}, hook={c.hooks[h]!r})",
            "provenance": provenance(),
        },
    )
    kw = dict(
        d_in=c.d_model,
        d_sae=c.n_latents,
        dtype=dtype,
        device="cpu",
        apply_b_dec_to_input=False,
        normalize_activations="none",
        metadata=meta,
    )
    sae_cls, cfg = (StandardSAE, StandardSAEConfig(**kw)) if theta_L is None else (JumpReLUSAE, JumpReLUSAEConfig(**kw))
    sae = sae_cls(cfg)
    sae.load_state_dict({k: v.to(device="cpu", dtype=cc.W_enc.dtype).contiguous() for k, v in tensors.items()})
    return sae


def export_sae_lens(
    cc: Crosscoder | str | Path,
    model: str | int,
    out_dir: str | Path,
    hook: str | int | None = None,
    model_id: str | None = None,
) -> Path:
    """Write model `model`'s slice of `cc` (a crosscoder or its saved folder) at `hook` into `out_dir` in
    sae_lens' format (`cfg.json` + `sae_weights.safetensors`, written atomically), loadable with
    `sae_lens.SAE.load_from_disk(out_dir)`; see `to_sae_lens` for what it computes. Returns `out_dir`."""
    from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME

    if not isinstance(cc, Crosscoder):
        cc = Crosscoder.load(cc)
    sae = to_sae_lens(cc, model, hook, model_id)
    out = Path(out_dir)
    state = {k: v.detach().contiguous() for k, v in sae.state_dict().items()}
    sae.process_state_dict_for_saving(state)
    atomic_write_bytes(out / SAE_WEIGHTS_FILENAME, safetensors_bytes(state))
    atomic_write_json(out / SAE_CFG_FILENAME, sae.cfg.to_dict())
    return out


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (its `--help` is this module's docstring and one line per flag)."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "crosscoder", metavar="CROSSCODER_DIR", help="a trained crosscoder folder (cfg.json + crosscoder.safetensors)"
    )
    p.add_argument("--model", required=True, help="which model's slice to export (one of the crosscoder's models)")
    p.add_argument("--out", required=True, help="output folder for the sae_lens SAE (created if missing)")
    p.add_argument("--hook", default=None, help="hook to export (required when the crosscoder has several)")
    p.add_argument(
        "--model-id",
        default=None,
        help="the SAE's metadata.model_name: the HF id / path tools load the model from "
        "(default: the crosscoder's model name)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    """`python -m featalign.crosscoder.export`: check the arguments, load the crosscoder, export, say where."""
    args = build_parser().parse_args(argv)
    src = check_exists(args.crosscoder, "CROSSCODER_DIR", "folder")
    if not (src / CFG_FILE).exists():
        raise UsageError(f"CROSSCODER_DIR {src} has no {CFG_FILE}: point at a training output folder")
    out = check_out_dir(args.out)
    cc = Crosscoder.load(src)
    path = export_sae_lens(cc, args.model, out, args.hook, args.model_id)
    kind = "standard (ReLU)" if cc.variant.jumprelu_threshold(cc) is None else "jumprelu"
    print(
        f"{cc.cfg.models[cc.model_index(args.model)]}'s slice of {src} ({cc.cfg.variant}, {cc.cfg.n_latents} "
        f"latents) -> {path}/ as a sae_lens {kind} SAE; load it with sae_lens.SAE.load_from_disk({str(path)!r})"
    )
    return path


def cli() -> None:
    """Console script `featalign-export-sae`."""
    sys.exit(run_cli(main, "featalign-export-sae", sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(run_cli(main, PROG))
