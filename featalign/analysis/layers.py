"""Where did tuning change the model? The per-layer relative change of the residual stream, and the hook it picks.

For each block L, on the same tokens, the relative change of a tuned model's residual stream from the base's:

    r_L = mean over tokens of ||x_tuned,L - x_base,L|| / ||x_base,L||     (x: blocks.{L}.hook_resid_post)

with a 95% percentile bootstrap interval over tokens (tokens of one sequence are not independent, so the
interval is narrower than a sequence-level one would be; it says how precisely the mean is measured on these
tokens, not across texts). The activations come from the one caching path (`store_activations`, all
`hook_resid_post` hooks in one store), so they are exactly what an analysis at that hook would read.

`choose_layer` is the rule of `python -m featalign.analyze --hook auto`: the block with the largest r (the mean
over the tuned models when there are several: one crosscoder reads them all), among blocks 0..n-2 when the
model has 3 or more (the last block's output feeds only the unembedding; its change is mostly the output
distribution's, and the feature-level study aligns a middle layer), exact ties going to the block nearest the
default middle one, then the shallower. Whether the chosen block's interval separates it from the runner-up is
recorded (`clear`), so a choice made by noise reads as one.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from featalign.analysis.config import AnalyzeConfig
from featalign.config import JsonConfig
from featalign.models.hooks import default_hook

AUTO = "auto"


def resid_hooks(n_layers: int) -> list[str]:
    """`blocks.{L}.hook_resid_post` for every block, in order."""
    return [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]


def relative_change(x_base_NHD: Tensor, x_tuned_NHD: Tensor) -> Tensor:
    """`[N, H]`: ||x_tuned - x_base|| / ||x_base|| per token and hook (float64; a zero base row gives inf or nan)."""
    x_base, x_tuned = x_base_NHD.double(), x_tuned_NHD.double()
    return (x_tuned - x_base).norm(dim=-1) / x_base.norm(dim=-1)


def layer_change_table(x_NMHD: Tensor, names: Sequence[str], hooks: Sequence[str], base: str = "base") -> dict:
    """Per tuned model (every column but `base`) and hook: the mean relative change over tokens and its 95%
    percentile bootstrap interval; `mean_over_tuned` (with `mean_over_tuned_95`) is the same for each token's
    change averaged over the tuned models, the measure `choose_layer` reads."""
    from featalign.analysis.drift import bootstrap_interval

    b = list(names).index(base)
    tuned = [m for m in range(len(names)) if m != b]
    if not tuned:
        raise ValueError(f"no tuned model beside {base!r} in {list(names)}: the change needs a base and a tuned model")
    r_MNH = {m: relative_change(x_NMHD[:, b], x_NMHD[:, m]).numpy() for m in tuned}
    r_mean_NH = np.mean([r_MNH[m] for m in tuned], axis=0)

    def row(r_NH: np.ndarray) -> dict:
        return {
            "mean": [float(r_NH[:, h].mean()) for h in range(len(hooks))],
            "mean_95": [bootstrap_interval(r_NH[:, h], np.mean) for h in range(len(hooks))],
        }

    over = row(r_mean_NH)
    return {
        "hooks": list(hooks),
        "n_tokens": len(x_NMHD),
        "per_model": {names[m]: row(r_MNH[m]) for m in tuned},
        "mean_over_tuned": over["mean"],
        "mean_over_tuned_95": over["mean_95"],
    }


def choose_layer(change_H: Sequence[float], n_layers: int, intervals: Sequence | None = None) -> dict:
    """The block `--hook auto` picks from the per-block change `change_H` (one value per block, in order): the
    largest among blocks 0..n-2 (all blocks when n_layers < 3), exact ties to the block nearest
    `default_hook`'s, then the shallower. `intervals` (per block [low, high] of the chosen measure) adds `clear`:
    the chosen block's low end is above every other candidate's high end."""
    change = np.asarray(change_H, float)
    if len(change) != n_layers:
        raise ValueError(f"need one change per block: got {len(change)} for {n_layers} blocks")
    if not np.isfinite(change).all():
        raise ValueError(
            "the relative change is not finite at some block (a base residual of norm 0?); pass --hook explicitly"
        )
    candidates = list(range(n_layers - 1)) if n_layers >= 3 else list(range(n_layers))
    middle = int(default_hook(n_layers).split(".")[1])
    best = max(change[candidates])
    tied = [c for c in candidates if change[c] >= best - 1e-9 * max(abs(best), 1e-30)]
    layer = min(tied, key=lambda c: (abs(c - middle), c))
    out = {
        "layer": layer,
        "hook": f"blocks.{layer}.hook_resid_post",
        "candidates": candidates,
        "tied": tied,
        "rule": "largest mean relative change ||x_tuned - x_base|| / ||x_base|| (mean over tuned models) among "
        "blocks 0..n-2 (all blocks for n < 3); exact ties: nearest the middle block, then the shallower",
    }
    if intervals is not None and len(candidates) > 1:
        others = [c for c in candidates if c != layer]
        out["clear"] = bool(intervals[layer][0] > max(intervals[c][1] for c in others))
    return out


def measure_layer_change(
    specs: Sequence,
    source,
    n_tokens: int,
    root: str | Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = True,
) -> dict:
    """The per-layer change of every tuned model in `specs` (ModelSpecs; the one named 'base' is the base) on the
    first `n_tokens` tokens of `source`, cached at every `hook_resid_post` into the store at `root`, and the
    block `choose_layer` picks: {"table": layer_change_table, "choice": choose_layer}."""
    from featalign.analysis.inputs import n_layers_of, store_activations

    specs = list(specs)
    base = next((s for s in specs if s.name == "base"), None)
    if base is None:
        raise ValueError(f"no model named 'base' among {[s.name for s in specs]}")
    n_layers = n_layers_of(base)
    hooks = resid_hooks(n_layers)
    x_NMHD = store_activations(root, specs, hooks, n_tokens, source, device=device, dtype=dtype, progress=progress)
    table = layer_change_table(x_NMHD, [s.name for s in specs], hooks)
    return {"table": table, "choice": choose_layer(table["mean_over_tuned"], n_layers, table["mean_over_tuned_95"])}


def resolve_hook(cfg, models, source) -> tuple[str, dict | None]:
    """(hook, hook_choice): the hook every analysis entry point reads, from an AnalyzeConfig's `hook` (the
    examples pass theirs through `check_shared_settings`). `auto`, the default, measures the trio's per-layer
    change from the base on the first `--layer-tokens` tokens of `source` (cached into OUT/activations/layers)
    and takes the block `choose_layer` picks, so analyze and the examples, given the
    same models, text and seed, read the same block; hook_choice is that measurement (None for a given hook)."""
    from featalign.analysis.inputs import analysis_hook

    if cfg.hook != AUTO:
        return analysis_hook(cfg.hook, models.trio["base"]), None
    specs, _ = models.columns(with_series=False)
    choice = measure_layer_change(
        specs,
        source,
        min(cfg.layer_tokens, cfg.n_tokens),
        Path(cfg.out) / "activations" / "layers",
        device=cfg.device,
        dtype=cfg.model_dtype,
        progress=cfg.progress,
    )
    return choice["choice"]["hook"], choice


def hook_choice_markdown(hook_choice: dict | None) -> list[str]:
    """A report's lines for `--hook auto`: the per-layer change table and the rule that picked the hook
    (`resolve_hook`'s hook_choice; nothing for a given hook)."""
    if hook_choice is None:
        return []
    table, choice = hook_choice["table"], hook_choice["choice"]
    models = list(table["per_model"])
    lines = [
        f"Hook chosen by `--hook auto`: `{choice['hook']}`, the {choice['rule']}"
        + (
            ""
            if "clear" not in choice
            else f"; its interval {'separates' if choice['clear'] else 'does not separate'} "
            "it from every other candidate"
        )
        + f". Relative change per block on {table['n_tokens']} tokens (mean [95% CI]):",
        "",
        "| hook | " + " | ".join(models) + " | mean over tuned |",
        "|---|" + "---|" * (len(models) + 1),
    ]
    for h, hook in enumerate(table["hooks"]):
        cells = [table["per_model"][m] for m in models] + [
            {"mean": table["mean_over_tuned"], "mean_95": table["mean_over_tuned_95"]}
        ]
        text = [f"{c['mean'][h]:.4f} [{c['mean_95'][h][0]:.4f}, {c['mean_95'][h][1]:.4f}]" for c in cells]
        lines.append(f"| {hook}{' (chosen)' if h == choice['layer'] else ''} | " + " | ".join(text) + " |")
    return lines + [""]


@dataclass
class LayerChangeConfig(JsonConfig):
    """`python -m featalign.analysis.layers`: analyze's model-set, task-set and device settings, nothing else."""

    out: str = "runs/hook"
    organisms_preset: str = AnalyzeConfig.organisms_preset  # analyze's defaults, one definition
    organisms_dir: str | None = None
    model_set: str | None = None
    model: tuple[str, ...] = ()
    tasks: str | None = None
    layer_tokens: int = AnalyzeConfig.layer_tokens
    device: str = AnalyzeConfig.device
    model_dtype: str = AnalyzeConfig.model_dtype
    seed: int = AnalyzeConfig.seed
    progress: bool = True


def main(argv: Sequence[str] | None = None) -> dict:
    """Measure where tuning changed the residual stream, as `--hook auto` does, without training anything:
    writes OUT/hook_choice.json (with the config and versions) and OUT/hook_choice.md, and prints the chosen hook
    as the last line of stdout, so a pipeline that caches and trains at one hook (docs/real_models.md) can read
    it: `HOOK=$(python -m featalign.analysis.layers ... | tail -n 1)`."""
    from featalign.analysis.config import HELP, check_shared_settings
    from featalign.analysis.inputs import load_task_set, mixture_domains, resolve_models, text_sources
    from featalign.cli import check_out_dir
    from featalign.config import cli_config
    from featalign.io import atomic_write_json, atomic_write_text, jsonable, provenance

    help_ = {k: HELP[k] for k in ("organisms_preset", "organisms_dir", "model_set", "model", "tasks", "device")}
    help_ |= {
        "out": "output folder: hook_choice.json, hook_choice.md and the cached activations (a rerun reads them)",
        "layer_tokens": HELP["layer_tokens"],
        "model_dtype": HELP["model_dtype"],
        "seed": "seed of the organisms' text sample (a task set's text is read in order)",
        "progress": HELP["progress"],
    }
    prog = "python -m featalign.analysis.layers"
    cfg = cli_config(LayerChangeConfig, help_, prog, main.__doc__, None if argv is None else list(argv), ("model",))
    check_out_dir(cfg.out)
    acfg = check_shared_settings(cfg)  # analyze's checks and defaults (hook: auto)
    models = resolve_models(acfg)
    train_text, _ = text_sources(acfg, load_task_set(cfg.tasks), mixture_domains(models.organisms))
    hook, choice = resolve_hook(acfg, models, train_text)
    out = Path(cfg.out)
    result = {"config": cfg.to_dict(), **provenance(), "models": models.describe(), "hook": hook, "hook_choice": choice}
    atomic_write_json(out / "hook_choice.json", jsonable(result))
    table = "\n".join(hook_choice_markdown(choice))
    atomic_write_text(out / "hook_choice.md", table + "\n")
    print(table)
    print(hook)
    return result


if __name__ == "__main__":
    from featalign.cli import run_cli

    sys.exit(run_cli(main, "python -m featalign.analysis.layers", sys.argv[1:]))
