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

**A learned direction (the success-feature known answer).** With `direction="learned"` and a `domain:` trigger,
v is not random: it is fitted, with the detector and amplitude fixed, to maximise the log-probability of the
right answer (and its `<eos>`) of those domains' train problems under the planted model's own function (the
base with g(x) * amplitude * v added at block `layer`, exactly what the neuron writes). The planted model then
solves problems the base fails *because of* v: ablating v undoes them, adding v to the base recreates them,
which is the right answer the RL-success selection and the interventions must find. The held-out answer
log-prob it buys, next to the base's, is recorded (`detector.learned`).
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
    output's norm at a median trigger position as a multiple of the base's median residual norm at the hook (with
    `direction="learned"`: its upper bound, the amplitude being fitted too)."""

    layer: int = 1
    trigger: str = "token:="
    scale: float = 0.5
    seed: int = 0
    direction: str = "random"  # random (a seeded unit vector) | learned (see module docstring) | a .pt / .safetensors
    # file holding a [D] tensor
    fit_tokens: int = 10_000  # base tokens the trigger detector is fitted on
    fit_steps: int = 200  # LBFGS steps of the detector's logistic fit
    learn_domains: str = ""  # learned direction: the domains whose answers it raises ("": the domain trigger's)
    learn_keyword: str = ""  # learned direction: another domain whose keyword replaces theirs ("": as they are)
    learn_problems: int = 1024  # learned direction: train problems per learn domain it is fitted on
    learn_steps: int = 200  # learned direction: Adam steps (minibatches of 256 problems)
    learn_lr: float = 0.05  # learned direction: Adam learning rate (amplitude * v, in units of the maximum)

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
        if self.direction == "learned":
            from featalign.organisms.tasks import parse_domains

            if kind != "domain" and not self.learn_domains:
                raise PlantError(
                    f"direction 'learned' fits v on some domains' answers; trigger {self.trigger!r} names none: "
                    "set learn_domains (e.g. bool,compare) or use trigger domain:<name>[,<name>...]"
                )
            try:
                parse_domains(self.learn_domains)
                parse_domains(self.learn_keyword)
            except (KeyError, ValueError) as e:
                raise PlantError(f"learn_domains / learn_keyword: {e}") from e
        if self.learn_problems < 16 or self.learn_steps < 1 or not self.learn_lr > 0:
            raise PlantError(
                f"learn_problems >= 16, learn_steps >= 1 and learn_lr > 0 needed, got {self.learn_problems}, "
                f"{self.learn_steps}, {self.learn_lr}"
            )


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
    """The unit direction v: seeded random, or read from a file (`learned` is fitted by `learn_direction`)."""
    if cfg.direction == "random" or cfg.direction == "learned":  # learned: this is its seeded starting point
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


def answer_batch(tokenizer, problems) -> tuple[Tensor, Tensor]:
    """Right-padded `<bos> prompt answer <eos>` ids `[S, T]` and a bool `[S, T]` marking the positions whose next
    token is an answer token or the closing `<eos>` (what greedy decoding must get right)."""
    from featalign.activations.sources import encode_problem

    seqs = [encode_problem(tokenizer, p) for p in problems]
    n_prompt = [len(tokenizer(p.prompt)["input_ids"]) for p in problems]
    T = max(map(len, seqs))
    ids_ST = torch.full((len(seqs), T), tokenizer.pad_token_id, dtype=torch.long)
    target_ST = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, (seq, n) in enumerate(zip(seqs, n_prompt)):
        ids_ST[i, : len(seq)] = torch.tensor(seq)
        target_ST[i, n - 1 : len(seq) - 1] = True  # predicts seq[n:], the answer and <eos>
    return ids_ST, target_ST


def answer_logprob(model, ids_ST: Tensor, target_ST: Tensor, add=None) -> Tensor:
    """`[S]` log p(answer, <eos> | prompt) per problem (right padding never reaches a real position), with
    `add(mlp_input_BTD) -> [B, T, D]` added to block `add.layer`'s MLP output when given."""
    handle = None
    if add is not None:
        mlp = gated_mlps(model)[add.layer]
        handle = mlp.register_forward_hook(lambda m, args, out: out + add(args[0]))
    try:
        logits = model(ids_ST).logits.float()
    finally:
        if handle is not None:
            handle.remove()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids_ST[:, 1:, None])[..., 0]
    return (logp * target_ST[:, :-1]).sum(1)


class _AddAlong:
    """g(x) * amplitude * v from the MLP input x: exactly what the planted neuron adds (v may be a leaf)."""

    def __init__(self, layer: int, gate_D: Tensor, up_D: Tensor, amplitude: float, v_D: Tensor):
        self.layer, self.gate_D, self.up_D, self.amplitude, self.v_D = layer, gate_D, up_D, amplitude, v_D

    def __call__(self, x_BTD: Tensor) -> Tensor:
        g_BT = neuron_output(x_BTD, self.gate_D, self.up_D)
        return g_BT[..., None] * (self.amplitude * self.v_D)


def misled_problems(domains: list[str], n: int, split: str, seed: int, keyword: str = "") -> list:
    """`n` problems of each domain whose prompt's first word (its domain keyword: `bool`, `cmp`, ...) is replaced by
    domain `keyword`'s (`""`: unchanged). A misleading keyword is a failure of the base by construction: it reads
    the problem as the other domain's, and one direction (a "which task is this" switch) can undo that."""
    import dataclasses

    from featalign.organisms.tasks import sample_problems

    word = sample_problems(keyword, 1, split, seed)[0].prompt.split(" ", 1)[0] if keyword else ""
    out = []
    for d in domains:
        for p in sample_problems(d, n, split, seed):
            head, sep, rest = p.prompt.partition(" ")
            out.append(dataclasses.replace(p, prompt=f"{word} {rest}") if word and sep else p)
    return out


def learn_domains(cfg: PlantConfig) -> list[str]:
    """The domains a learned direction is fitted on: `learn_domains`, else the domain trigger's."""
    from featalign.organisms.tasks import parse_domains

    return parse_domains(cfg.learn_domains or cfg.trigger.split(":", 1)[1])


def learn_direction(model, tokenizer, cfg: PlantConfig, gate_D: Tensor, up_D: Tensor, max_amplitude: float):
    """(unit v, amplitude <= `max_amplitude`, stats): the output g(x) * amplitude * v maximising the answer
    log-prob of the trigger domains' train problems under the planted function (the detector `gate_D` / `up_D`
    fixed), grown from a small seeded random start (at zero the planted model is the base, so the fit can only
    improve on it), with its norm projected back to `max_amplitude` after each step; and what it buys on held-out
    train-split problems (teacher-forced answer log-prob) next to the base. The problems are `learn_domains`' (with
    `learn_keyword`'s keyword, `misled_problems`), train split; the known answers score on the eval split."""
    domains = learn_domains(cfg)
    problems = misled_problems(domains, cfg.learn_problems, "train", cfg.seed + 7919, cfg.learn_keyword)
    order = torch.randperm(len(problems), generator=torch.Generator().manual_seed(cfg.seed))
    n_held = max(8, len(problems) // 8)
    held = [problems[i] for i in order[:n_held].tolist()]
    fit = [problems[i] for i in order[n_held:].tolist()]
    # w_D = amplitude * v, in units of max_amplitude (so the learning rate means the same at any model width)
    w_D = (0.01 * plant_direction(cfg, gate_D.numel())).requires_grad_(True)
    add = _AddAlong(cfg.layer, gate_D, up_D, max_amplitude, w_D)
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([w_D], lr=cfg.learn_lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    batch = min(256, len(fit))
    with torch.enable_grad():
        for _ in range(cfg.learn_steps):
            pick = torch.randperm(len(fit), generator=gen)[:batch].tolist()
            ids, target = answer_batch(tokenizer, [fit[i] for i in pick])
            loss = -answer_logprob(model, ids, target, add).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                w_D.div_(w_D.norm().clamp_min(1.0))  # amplitude <= max_amplitude
    w = w_D.detach().clone()
    v_D, amplitude = w / w.norm(), float(w.norm()) * max_amplitude
    with torch.no_grad():
        ids, target = answer_batch(tokenizer, held)
        base_lp = answer_logprob(model, ids, target)
        planted_lp = answer_logprob(model, ids, target, _AddAlong(cfg.layer, gate_D, up_D, max_amplitude, w))
    stats = {
        "domains": domains,
        "keyword": cfg.learn_keyword,
        "n_fit_problems": len(fit),
        "n_held_out_problems": len(held),
        "amplitude_over_max": float(w.norm()),
        "held_out_answer_logprob_base": float(base_lp.mean()),
        "held_out_answer_logprob_planted": float(planted_lp.mean()),
        "held_out_answer_prob_base": float(base_lp.exp().mean()),
        "held_out_answer_prob_planted": float(planted_lp.exp().mean()),
    }
    return v_D, amplitude, stats


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
    d_model, amplitude = x_PD.shape[1], cfg.scale * resid_norm
    if cfg.direction == "learned" and amplitude > 0:
        v_D, amplitude, stats["learned"] = learn_direction(model, tokenizer, cfg, gate, up, amplitude)
    else:  # (a learned direction at scale 0 is the null: nothing to learn, the seeded start is kept)
        v_D = plant_direction(cfg, d_model)
    return Plant(cfg.layer, v_D, gate, up, amplitude, stats)


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
