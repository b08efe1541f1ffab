"""Planted features: a model that differs from its base by one known direction, written into the weights.

A known answer for model diffing (issue 14): the analyses must find what was put there on purpose. One
neuron is appended to the gated MLP of block `layer` of a Llama-family model (gate_proj / up_proj /
down_proj; every other block gets a zero neuron, since the config has one `intermediate_size`). Its
input weights are a trigger detector w (a logistic probe, without bias, fitted on the base's MLP inputs
to the positions where the trigger is: a token, or any token of one domain's problems), its output
writes a unit direction v scaled to a typical residual norm:

    neuron(x) = silu(a <w, x>) * a <w, x> / c        (x: the MLP input; c makes it ~1 on a trigger)
    resid_post[layer] (planted) = resid_post[layer] (base) + g(x) * amplitude * v,  g = neuron(x)

exactly, since nothing before that point changed (`tests/organisms/test_planted.py` checks it against a
forward of the base with a hook adding g v). silu(s) s >= 0 and vanishes for s << 0, so g is ~0 off the
trigger. Everything else is the base's weights: the known answer is one latent, tuned-only, with decoder
~v, active where the trigger is. `scale=0` gives a function-identical copy made by the same code path (the
null). The output is an ordinary HF folder, so every featalign stage reads it unchanged; its
`featalign.json` records what was planted (`planted`: layer, trigger, scale, amplitude, seed, detector
quality) and `planted.safetensors` holds v and w.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from featalign.config import JsonConfig
from featalign.io import atomic_dir, provenance

PLANT_FILE = "planted.safetensors"
META_FILE = "featalign.json"
GATE_AT_MEDIAN = 8.0  # a <w, x> at the median trigger position: silu(8) is 8 to 3e-4, silu(-8) is -3e-3
FIRES_AT = 0.1  # g above this counts as "the neuron fired" for the detector's precision / recall (g ~ 1 at a trigger)


class PlantError(ValueError):
    """A model, trigger or setting the planting cannot use."""


@dataclass
class PlantConfig(JsonConfig):
    """What to plant and where. `trigger` is `token:<t>` (positions whose token is t) or `domain:<d>[,<d2>...]`
    (every position of those domains' problems, text from `DomainMixtureSource`); `scale` is the planted
    output's norm at a median trigger position as a multiple of the base's median residual norm at the hook."""

    layer: int = 1
    trigger: str = "token:="
    scale: float = 0.5
    seed: int = 0
    direction: str = "random"  # random (a seeded unit vector) | a .pt / .safetensors file holding a [D] tensor
    fit_tokens: int = 10_000  # base tokens the trigger detector is fitted on
    fit_steps: int = 200  # LBFGS steps of the detector's logistic fit

    def __post_init__(self) -> None:
        kind = self.trigger.split(":", 1)[0]
        if kind not in ("token", "domain") or ":" not in self.trigger or not self.trigger.split(":", 1)[1]:
            raise PlantError(f"trigger {self.trigger!r}: use token:<t> (e.g. token:=) or domain:<name>[,<name>...]")
        if self.scale < 0 or not math.isfinite(self.scale):
            raise PlantError(f"scale must be a finite number >= 0, got {self.scale}")
        if self.layer < 0:
            raise PlantError(f"layer must be >= 0, got {self.layer}")
        if self.fit_tokens < 100:
            raise PlantError(f"fit_tokens must be >= 100 (the detector needs trigger examples), got {self.fit_tokens}")


def gated_mlps(model: torch.nn.Module) -> list[Any]:
    """The gated MLPs (gate_proj / up_proj / down_proj) of a Llama-family causal LM, one per block; any other
    architecture is refused (its MLP has no slot for the neuron this module writes)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    mlps = [getattr(block, "mlp", None) for block in layers] if layers is not None else []
    if not mlps or not all(all(hasattr(m, p) for p in ("gate_proj", "up_proj", "down_proj")) for m in mlps):
        arch = type(model).__name__
        raise PlantError(
            f"planting edits Llama-family gated MLPs (model.layers[i].mlp.gate_proj/up_proj/down_proj: Llama, "
            f"Qwen2, Mistral); {arch} has none, so pass a model of such an architecture"
        )
    return mlps


def trigger_labels(cfg: PlantConfig, tokenizer, n_tokens: int, seed: int) -> tuple[list[list[int]], list[Tensor]]:
    """(token sequences, bool label per position) of the organisms' domain mixture: where the trigger is."""
    from featalign.activations.sources import DomainMixtureSource, encode_problem
    from featalign.organisms.tasks import DOMAINS, parse_domains, sample_mixture

    kind, arg = cfg.trigger.split(":", 1)
    seqs, labels, rows = [], [], 0
    if kind == "token":
        ids = tokenizer.encode(arg, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise PlantError(f"trigger {cfg.trigger!r}: {arg!r} is not one token of this tokenizer; pick a single one")
        for seq in DomainMixtureSource("train", seed, n_tokens).sequences(tokenizer):
            seqs.append(seq)
            labels.append(torch.tensor(seq) == ids[0])
            rows += len(seq)
            if rows >= n_tokens:
                break
        return seqs, labels
    try:
        chosen = set(parse_domains(arg.split(",")))
    except (KeyError, ValueError) as e:
        raise PlantError(f"trigger {cfg.trigger!r}: {e}") from e
    for problem in sample_mixture(list(DOMAINS), max(64, n_tokens // 16), "train", seed):
        seq = encode_problem(tokenizer, problem)
        seqs.append(seq)
        label = torch.full((len(seq),), problem.domain in chosen)
        label[0] = False  # <bos>: the same state in every sequence, so no detector can tell the domain there
        labels.append(label)
        rows += len(seq)
        if rows >= n_tokens:
            break
    return seqs, labels


@torch.no_grad()
def mlp_inputs(model, layer: int, seqs: list[list[int]], hook_name: str = "input") -> Tensor:
    """`[P, D]` inputs of block `layer`'s MLP (or, with hook_name='resid', the block's output) at every position."""
    target = gated_mlps(model)[layer] if hook_name == "input" else model.model.layers[layer]
    got: list[Tensor] = []
    if hook_name == "input":
        handle = target.register_forward_pre_hook(lambda m, args: got.append(args[0][0]))
    else:
        handle = target.register_forward_hook(
            lambda m, args, out: got.append((out[0] if isinstance(out, tuple) else out)[0])
        )
    try:
        for seq in seqs:
            model(torch.tensor([seq]))
    finally:
        handle.remove()
    return torch.cat(got).float()


def fit_detector(x_PD: Tensor, y_P: Tensor, steps: int, seed: int) -> Tensor:
    """Logistic-regression weights w (no bias: the MLP has none) separating trigger positions from the rest;
    classes weighted equally, a small L2 penalty so separable data gives a finite w."""
    torch.manual_seed(seed)
    y = y_P.float()
    pos_weight = (len(y) - y.sum()) / y.sum().clamp_min(1)
    w = torch.zeros(x_PD.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = x_PD @ w
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
        loss = loss + 1e-4 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach()


def neuron_output(x_PD: Tensor, gate_D: Tensor, up_D: Tensor) -> Tensor:
    """g(x) = silu(<gate, x>) * <up, x>: what the planted neuron computes (Llama's gated MLP, one unit)."""
    return torch.nn.functional.silu(x_PD @ gate_D) * (x_PD @ up_D)


def plant_direction(cfg: PlantConfig, d_model: int) -> Tensor:
    """The unit direction v: seeded random, or read from a file."""
    if cfg.direction == "random":
        v = torch.randn(d_model, generator=torch.Generator().manual_seed(cfg.seed))
    else:
        p = Path(cfg.direction)
        if not p.is_file():
            raise PlantError(f"direction {p}: no such file; pass a .pt or .safetensors file holding a [D] tensor")
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            v = next(iter(load_file(str(p)).values()))
        else:
            v = torch.load(p, weights_only=True)
        v = torch.as_tensor(v).float().flatten()
        if v.numel() != d_model or not bool(torch.isfinite(v).all()) or float(v.norm()) == 0:
            raise PlantError(f"direction {p}: need a finite nonzero vector of {d_model} values, got {v.numel()}")
    return v / v.norm()


@dataclass
class Plant:
    """A fitted plant: the neuron's weights, the unit direction, its amplitude, and how well the detector fires."""

    layer: int
    direction_D: Tensor  # v, unit norm
    gate_D: Tensor  # the neuron's gate_proj row (a w)
    up_D: Tensor  # its up_proj row (a w / c)
    amplitude: float  # down_proj column = amplitude * v
    stats: dict

    def added(self, x_PD: Tensor) -> Tensor:
        """`[P, D]`: what the neuron adds to the residual stream at MLP inputs `x_PD`."""
        return neuron_output(x_PD, self.gate_D, self.up_D)[:, None] * (self.amplitude * self.direction_D)


def fit_plant(model, tokenizer, cfg: PlantConfig) -> Plant:
    """Fit the trigger detector on the base's MLP inputs of block `cfg.layer` (80% of the sequences; the rest
    measure its precision / recall) and size the output from the base's residual norm at that block."""
    n_layers = len(gated_mlps(model))
    if cfg.layer >= n_layers:
        raise PlantError(f"layer {cfg.layer}: the model has blocks 0..{n_layers - 1}")
    if getattr(gated_mlps(model)[cfg.layer].gate_proj, "bias", None) is not None:
        raise PlantError("the model's MLP has biases (mlp_bias); planting writes bias-free neurons only")
    seqs, labels = trigger_labels(cfg, tokenizer, cfg.fit_tokens, cfg.seed)
    y_P = torch.cat(labels)
    if int(y_P.sum()) < 20 or int((~y_P).sum()) < 20:
        raise PlantError(
            f"trigger {cfg.trigger!r} is at {int(y_P.sum())} of {len(y_P)} positions; pick a trigger "
            "that is present and absent at >= 20 positions each"
        )
    x_PD = mlp_inputs(model, cfg.layer, seqs)
    resid_norm = float(mlp_inputs(model, cfg.layer, seqs, "resid").norm(dim=-1).median())
    n_fit = sum(len(s) for s in seqs[: int(0.8 * len(seqs))])
    w = fit_detector(x_PD[:n_fit], y_P[:n_fit], cfg.fit_steps, cfg.seed)
    median_trigger = float((x_PD[:n_fit][y_P[:n_fit]] @ w).median())
    if median_trigger <= 0:
        raise PlantError(f"trigger {cfg.trigger!r}: no linear detector of it at layer {cfg.layer}; try another")
    gate = w * (GATE_AT_MEDIAN / median_trigger)
    up = gate / (GATE_AT_MEDIAN * torch.nn.functional.silu(torch.tensor(GATE_AT_MEDIAN)))
    g_held = neuron_output(x_PD[n_fit:], gate, up)
    on, y_held = g_held > FIRES_AT, y_P[n_fit:]
    stats = {
        "fires_at": FIRES_AT,
        "trigger_rate": float(y_P.float().mean()),
        "held_out_precision": float((on & y_held).sum() / on.sum().clamp_min(1)),
        "held_out_recall": float((on & y_held).sum() / y_held.sum().clamp_min(1)),
        "held_out_mean_g_on_trigger": float(g_held[y_held].mean()) if y_held.any() else None,
        "held_out_max_abs_g_off_trigger": float(g_held[~y_held].abs().max()) if (~y_held).any() else None,
        "base_median_resid_norm": resid_norm,
        "n_fit_positions": n_fit,
    }
    d_model = x_PD.shape[1]
    return Plant(cfg.layer, plant_direction(cfg, d_model), gate, up, cfg.scale * resid_norm, stats)


def grown(linear: Any, extra: Tensor, dim: int) -> torch.nn.Linear:
    """A bias-free Linear with `extra` appended to `linear`'s weight along `dim` (0: one more output, 1: input)."""
    old: Tensor = linear.weight.data
    out_f, in_f = old.shape[0] + (dim == 0), old.shape[1] + (dim == 1)
    new = torch.nn.Linear(int(in_f), int(out_f), bias=False, dtype=old.dtype)
    new.weight.data = torch.cat([old, extra.to(old.dtype)], dim)
    return new


def add_neuron(model, plant: Plant) -> None:
    """Append one unit to every block's MLP (in place): the plant's in block `plant.layer`, zeros elsewhere (an
    all-zero unit adds exactly silu(0) * 0 = 0), so `intermediate_size + 1` holds for the whole config."""
    for i, mlp in enumerate(gated_mlps(model)):
        here = i == plant.layer
        d_model = plant.direction_D.numel()
        zero = torch.zeros(d_model)
        mlp.gate_proj = grown(mlp.gate_proj, (plant.gate_D if here else zero)[None], 0)
        mlp.up_proj = grown(mlp.up_proj, (plant.up_D if here else zero)[None], 0)
        mlp.down_proj = grown(mlp.down_proj, (plant.amplitude * plant.direction_D if here else zero)[:, None], 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = int(mlp.up_proj.weight.shape[0])
    model.config.intermediate_size = int(model.config.intermediate_size) + 1


def plant_feature(src: str | Path, out: str | Path, cfg: PlantConfig, meta: dict | None = None) -> Path:
    """Write `out`: the HF model folder `src` with one planted neuron (module docstring); `meta` (a role, a
    checkpoint index) is added to its featalign.json. Refused before any work: a missing folder, an
    architecture without gated MLPs, a layer past the last block, a trigger that is not one token."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from featalign.models import tokenizer_from_folder

    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise PlantError(f"{src} is not a Hugging Face model folder (no config.json); pass a model folder")
    if out.resolve() == src.resolve():
        raise PlantError(f"out {out} is the source folder; pass another folder (the source is never written)")
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    gated_mlps(model)
    tokenizer = tokenizer_from_folder(src)
    plant = fit_plant(model, tokenizer, cfg)
    add_neuron(model, plant)
    record = {**cfg.to_dict(), "amplitude": plant.amplitude, "source": src.name, "detector": plant.stats}
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if (src / "generation_config.json").is_file():
            shutil.copy(src / "generation_config.json", tmp / "generation_config.json")
        tensors = {"direction": plant.direction_D, "gate": plant.gate_D, "up": plant.up_D}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / PLANT_FILE))
        body = {**(meta or {}), "planted": record, **provenance(), "complete": True}
        (tmp / META_FILE).write_text(json.dumps(body, indent=2))
    return out


def load_plant(folder: str | Path) -> Plant:
    """The plant recorded in a planted folder (what the known-answer harness scores against)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / PLANT_FILE).is_file():
        raise PlantError(f"{folder} holds no {PLANT_FILE}: not a folder written by plant_feature")
    t = load_file(str(folder / PLANT_FILE))
    rec = json.loads((folder / META_FILE).read_text())["planted"]
    return Plant(rec["layer"], t["direction"], t["gate"], t["up"], rec["amplitude"], rec["detector"])


def is_planted(folder: str | Path, cfg: PlantConfig | None = None) -> bool:
    """Whether `folder` is a complete planted folder (written with `cfg`, when given): what a rerun reuses."""
    meta = Path(folder) / META_FILE
    if not (Path(folder) / PLANT_FILE).is_file() or not meta.is_file():
        return False
    try:
        body = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return False
    recorded = {k: body.get("planted", {}).get(k) for k in PlantConfig().to_dict()}
    return bool(body.get("complete")) and (cfg is None or recorded == cfg.to_dict())
