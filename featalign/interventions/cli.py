"""`python -m featalign.interventions`: edit a crosscoder's features in a live model, score a task set.

The intervention stage's command line: take a trained crosscoder (`python -m featalign.train_crosscoder
--out DIR`), one of the models it was trained on, a list of its latents and an edit, and measure what the
edit does to the model's accuracy on each task, next to `--controls` random latent sets matched on
firing frequency (a feature set counts only when it moves accuracy more than the controls do):

    python -m featalign.interventions --crosscoder runs/cc --features 12,40,77 --edit ablate
    python -m featalign.interventions --crosscoder runs/cc --model rl=/ckpt/qwen-grpo --edit-model rl \\
        --features success.json --edit steer --value 4 --tasks gsm8k.jsonl --verifier final_answer

Without `--model`/`--model-set` the models are the organisms (the crosscoder's slot names pick them).
The firing rates (for the controls) and typical activations (for `steer`) are model m's latents
(`Crosscoder.encode_as`) on the task set's problems, cached once into OUT/activations by the one
caching path (resumable). Writes OUT/config.json, results.json (`InterventionResult`, loads back with
`InterventionResult.load`), report.md and figures/deltas.png.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featalign.activations import ActivationStore, TaskSetSource, cache_activations
from featalign.analysis.attribution import encoder_stats
from featalign.analysis.inputs import load_task_set
from featalign.cli import UsageError, check_choice, check_device, check_exists, check_out_dir, check_positive, run_cli
from featalign.config import JsonConfig, config_from_args, config_parser, start_run
from featalign.crosscoder import Crosscoder
from featalign.crosscoder.model import read_config
from featalign.interventions.edits import ablate, as_feature_ids, clamp, project, scale, steer, typical_activation
from featalign.interventions.experiments import SIZE_BINS_HELP, InterventionResult, run_intervention
from featalign.io import atomic_write_text
from featalign.model_set import ModelSet
from featalign.models import ModelGroup
from featalign.plotting import pyplot, save_figure

EDITS = ("ablate", "project", "clamp", "scale", "steer")


@dataclass
class InterventionConfig(JsonConfig):
    """The settings of one intervention run, saved as OUT/config.json; checked before any model is loaded."""

    crosscoder: str = ""  # a trained crosscoder folder (cfg.json + weights)
    features: str = ""  # comma-separated latent ids, or a JSON file with a list (or {"features": [...]})
    edit: str = "ablate"
    value: float | None = None  # clamp value | scale factor | steer coefficient (x typical activation)
    edit_model: str | None = None  # the crosscoder slot to edit (default: rl if there is one, else the last)
    model_set: str | None = None
    model: tuple[str, ...] = ()
    tasks: str = "organisms"
    verifier: str | None = None  # exact | numeric | final_answer | multiple_choice; None: the task-set file's
    n_per_task: int | None = None
    controls: int = 20
    n_bins: int = 10
    size_bins: int = 0
    positions: str = "all"
    n_tokens: int = 20_000  # activation rows for firing rates / typical activations
    batch_size: int = 64
    seed: int = 0
    out: str = "runs/intervention"
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        self.model = tuple(self.model)
        if not self.crosscoder:
            raise UsageError("--crosscoder DIR is required (a folder written by python -m featalign.train_crosscoder)")
        if not self.features:
            raise UsageError("--features is required: comma-separated latent ids (e.g. 3,17) or a JSON file")
        check_choice("--edit", self.edit, EDITS)
        if self.edit not in ("ablate", "project") and self.value is None:
            raise UsageError(f"--edit {self.edit} needs --value (clamp value, scale factor or steer coefficient)")
        check_choice("--positions", self.positions, ("all", "prompt", "generated"))
        for name in ("controls", "n_per_task", "n_tokens", "batch_size", "threads", "n_bins", "size_bins"):
            check_positive(
                f"--{name.replace('_', '-')}", getattr(self, name), allow_zero=name in ("controls", "size_bins")
            )
        check_device(self.device)


HELP = {
    "crosscoder": "trained crosscoder folder (python -m featalign.train_crosscoder --out DIR)",
    "features": 'latent ids to edit: 3,17,40 or a JSON file holding a list (or {"features": [...]})',
    "edit": "ablate (remove the latents' contribution) | project (where they fire, remove the activation's component "
    "along their decoder rows) | clamp | scale | steer (add coef x typical activation)",
    "value": "clamp value, scale factor or steering coefficient",
    "edit_model": "which of the crosscoder's models to edit (default: rl if present, else the last)",
    "model_set": "a JSON/YAML model set naming the crosscoder's models (default: the organisms)",
    "model": "a model NAME=DIR[@revision] whose NAME is one of the crosscoder's models",
    "tasks": "task set: organisms, organisms:add,sub, or a JSONL file",
    "verifier": "verifier of a JSONL task set: exact | numeric | final_answer | multiple_choice (default: a task-set "
    "file's own, else exact)",
    "n_per_task": "first N problems of each task",
    "controls": "matched random latent sets (0: none)",
    "n_bins": "firing-frequency quantile bins the controls are matched in",
    "size_bins": SIZE_BINS_HELP,
    "positions": "where the edit applies: all | prompt (prompt tokens only) | generated (generated tokens only)",
    "n_tokens": "activation rows (task problems' tokens) for firing rates and typical activations",
    "batch_size": "generation / caching batch size",
    "seed": "seed of the control draws",
    "out": "output folder",
    "device": "cpu | cuda | cuda:N",
    "dtype": "model dtype: float32 | bfloat16 | float16",
    "threads": "torch threads",
    "progress": "progress bars",
}


def build_parser():
    """The flags: every `InterventionConfig` field, `--config FILE`, repeatable `--model`."""
    return config_parser(InterventionConfig, HELP, "python -m featalign.interventions", __doc__, repeated=("model",))


def read_features(spec: str) -> tuple[int, ...]:
    """`3,17,40`, or a JSON file with a list of ids or a dict with a `features` list (e.g. results.json)."""
    if Path(spec).suffix == ".json" or Path(spec).is_file():
        data = json.loads(check_exists(spec, "--features").read_text())
        data = data.get("features", data) if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise UsageError(f'--features {spec}: expected a JSON list of latent ids or {{"features": [...]}}')
        return as_feature_ids(data)
    try:
        return as_feature_ids([int(s) for s in spec.split(",") if s.strip()])
    except ValueError as e:
        raise UsageError(f"--features {spec!r}: write comma-separated latent ids, e.g. 3,17,40 ({e})") from e


def pick_edit_model(cfg: InterventionConfig, cc_models: tuple[str, ...]) -> str:
    """`--edit-model`, else `rl` (the model whose features the studies ablate), else the crosscoder's last model."""
    name = cfg.edit_model or ("rl" if "rl" in cc_models else cc_models[-1])
    if name not in cc_models:
        raise UsageError(f"--edit-model {name}: the crosscoder's models are {', '.join(cc_models)}")
    return name


def plan(cfg: InterventionConfig):
    """Everything checked before a model is loaded: crosscoder config, features, model, task set."""
    check_exists(cfg.crosscoder, "--crosscoder", "crosscoder folder")
    check_out_dir(cfg.out)
    try:
        cc_cfg, _ = read_config(cfg.crosscoder)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--crosscoder {cfg.crosscoder}: {e}") from e
    ids = read_features(cfg.features)
    if not ids or max(ids) >= cc_cfg.n_latents:
        raise UsageError(
            f"--features: ids must lie in [0, {cc_cfg.n_latents}) (the crosscoder's latents); got {list(ids) or 'none'}"
        )
    name = pick_edit_model(cfg, tuple(cc_cfg.models))
    try:
        models = ModelSet.resolve(cfg.model_set, cfg.model)
        spec = models[name]
    except (KeyError, ValueError) as e:
        raise UsageError(f"--model: no model named {name!r} (the crosscoder's {name!r} slot): {e}") from e
    tasks = load_task_set(cfg.tasks, cfg.n_per_task, cfg.verifier)
    return ids, name, spec, tasks


def edit_factory(cfg: InterventionConfig, cc: Crosscoder, x_NMHD: torch.Tensor, name: str):
    """ids -> Edit; `steer` scales each latent's typical activation in the edited model (0 if it never fires)."""
    if cfg.edit == "ablate":
        return ablate
    if cfg.edit == "project":
        return project
    value = cfg.value
    assert value is not None  # InterventionConfig refuses every edit but ablate / project without --value
    if cfg.edit == "clamp":
        return lambda ids: clamp(ids, value)
    if cfg.edit == "scale":
        return lambda ids: scale(ids, value)
    return lambda ids: steer(ids, value, typical_activation(cc, x_NMHD, ids, model=name).nan_to_num(0.0), decoder=name)


def markdown(res: InterventionResult, cfg: InterventionConfig) -> str:
    """report.md: one row per task, the edit's delta with its interval next to McNemar and control p."""
    what = cfg.edit if cfg.value is None else f"{cfg.edit} ({cfg.value:g})"
    lines = [
        f"# Intervention: {what} of {len(res.features)} latents in `{res.model_name}`",
        "",
        f"Crosscoder `{cfg.crosscoder}`, latents {res.features}; {len(res.control_features)} random latent sets "
        f"matched on firing frequency as controls. Delta = accuracy with - without the edit (95% paired "
        "bootstrap interval); control p = share of controls moving accuracy at least as much.",
        "",
        "| task | n | acc without | acc with | delta [95% CI] | McNemar p | control p |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, t in res.tasks.items():
        cp = "-" if np.isnan(t.control_p) else f"{t.control_p:.3g}"
        lines.append(
            f"| {task} | {t.n} | {t.acc_without:.3f} | {t.acc_with:.3f} | {t.delta:+.3f} "
            f"[{t.ci_low:+.3f}, {t.ci_high:+.3f}] | {t.mcnemar_p:.3g} | {cp} |"
        )
    return "\n".join(lines + ["", "Figure: `figures/deltas.png`."]) + "\n"


def plot_deltas(res: InterventionResult, path: Path) -> Path:
    """The edit's delta per task (marker) over its controls' deltas (grey dots): what "beyond controls" means."""
    plt = pyplot()
    tasks = list(res.tasks)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(tasks) + 2), 3.4))
    for i, t in enumerate(res.tasks.values()):
        if t.control_deltas:
            ax.scatter(
                np.full(len(t.control_deltas), i) + np.linspace(-0.15, 0.15, len(t.control_deltas)),
                t.control_deltas,
                s=10,
                color="0.6",
                label="controls" if i == 0 else None,
            )
        ax.errorbar(
            [i],
            [t.delta],
            yerr=[[t.delta - t.ci_low], [t.ci_high - t.delta]],
            fmt="o",
            color="C3",
            capsize=3,
            label="edit (95% CI)" if i == 0 else None,
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_ylabel("accuracy delta")
    ax.set_title(
        f"edit of latents {res.features[:8]}{'...' if len(res.features) > 8 else ''} in {res.model_name}", fontsize=9
    )
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def run(cfg: InterventionConfig) -> InterventionResult:
    """Cache the edited model's activations on the tasks, then score the edit and its controls."""
    ids, name, spec, tasks = plan(cfg)
    torch.set_num_threads(cfg.threads)
    out = start_run(cfg, cfg.out)
    cc = Crosscoder.load(cfg.crosscoder, device=cfg.device).eval()
    group = ModelGroup.load([spec], dtype=cfg.dtype, device=cfg.device)
    model = group.models[0]
    cache_activations(
        group,
        TaskSetSource(tasks),
        hooks=list(cc.cfg.hooks),
        out_dir=out / "activations",
        n_tokens=cfg.n_tokens,
        progress=cfg.progress,
    )
    x_NHD = ActivationStore(out / "activations").read(0, cfg.n_tokens)[:, 0].to(cfg.device, torch.float32)
    # model m's latents read only slot m (`encode_as`): a broadcast view stands in for the other slots
    x_NMHD = x_NHD.unsqueeze(1).expand(-1, cc.cfg.n_models, -1, -1)
    stats = encoder_stats(cc, x_NMHD, model=name) if cfg.controls else {}
    with torch.no_grad():
        res = run_intervention(
            model,
            model.tokenizer,
            cc,
            name,
            ids,
            edit_factory(cfg, cc, x_NMHD, name),
            tasks,
            n_controls=cfg.controls,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            firing_freq_L=stats.get("firing_rate"),
            positions=cfg.positions,
            n_bins=cfg.n_bins,
            size_L=stats.get("mean_recon_norm"),
            size_bins=cfg.size_bins,
        )
    res.save(out / "results.json")
    plot_deltas(res, out / "figures" / "deltas.png")
    atomic_write_text(out / "report.md", markdown(res, cfg))
    return res


def main(argv: Sequence[str] | None = None) -> InterventionResult:
    """Parse, check, run; prints the report. Raises rather than exits, for `run_cli`."""
    t0 = time.time()
    cfg = config_from_args(InterventionConfig, build_parser().parse_args(argv))
    res = run(cfg)
    print((Path(cfg.out) / "report.md").read_text())
    print(f"written to {cfg.out}/ (results.json, report.md, figures/) in {time.time() - t0:.0f} s")
    return res


def cli(prog: str = "featalign-intervene") -> None:
    """Console script `featalign-intervene`; also `python -m featalign.interventions`."""
    sys.exit(run_cli(main, prog, sys.argv[1:]))
