"""The machinery the analysis stages run on: `Stage`, the `AnalysisContext` they share, and the run loop.

The stages themselves and their registry are in `featalign.analysis.stages`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featalign.analysis.config import AnalyzeConfig
from featalign.analysis.inputs import Activations, AnalysisModels, store_activations
from featalign.analysis.training import train_or_load

Sections = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    """One unit of the analysis: `run(ctx)` -> report sections; `markdown(report)` -> its report.md lines.
    `uses` names the shared inputs it reads ('train' / 'eval' activations, the 'trio' crosscoder), which the
    pipeline prepares (and times) before the stages run."""

    name: str
    run: Callable[[AnalysisContext], Sections]
    markdown: Callable[[dict], list[str]]
    requires: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()


@dataclass
class AnalysisContext:
    """Everything stages share: settings, models, hook, text, and lazily the activations and the trio.
    `results` holds the Python objects a stage hands to the ones after it (e.g. the attribution)."""

    cfg: AnalyzeConfig
    models: AnalysisModels
    hook: str
    sources: tuple[Any, Any]  # (train, eval) token sources
    task_set: Any = None
    stage_names: list[str] = field(default_factory=list)
    given: Any = None  # a trained trio crosscoder to analyse instead of training one
    hook_choice: dict | None = None  # --hook auto: the per-layer change table and the choice (layers.py)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    @cached_property
    def train(self) -> Activations:
        """Training activations: the trio, plus every checkpoint when drift runs (one store row, all models)."""
        with_series = "drift" in self.stage_names
        specs, aliases = self.models.columns(with_series)
        x_NMHD = store_activations(
            self.out / "activations" / "train",
            specs,
            self.hook,
            self.cfg.n_tokens,
            self.sources[0],
            device=self.cfg.device,
            dtype=self.cfg.model_dtype,
            progress=self.cfg.progress,
        )
        return Activations(x_NMHD, [s.name for s in specs], aliases)

    @cached_property
    def eval(self) -> Activations:
        """Held-out activations of the trio (attribution statistics, Latent Scaling)."""
        specs, _ = self.models.columns(with_series=False)
        x_NMHD = store_activations(
            self.out / "activations" / "eval",
            specs,
            self.hook,
            self.cfg.eval_tokens,
            self.sources[1],
            device=self.cfg.device,
            dtype=self.cfg.model_dtype,
            progress=self.cfg.progress,
        )
        return Activations(x_NMHD, [s.name for s in specs])

    @cached_property
    def trio(self):
        """The trio crosscoder: the one given, or trained (or reloaded) on the training activations."""
        if self.given is not None:
            return self.given
        names = self.models.trio_names
        return self.crosscoder("trio", names, self.train.columns(*names))

    def crosscoder(self, name: str, models: tuple[str, ...], x_NMHD: torch.Tensor):
        """Train (or reload) crosscoder `name` of `models` on `x_NMHD` under OUT/crosscoders."""
        return train_or_load(self.out / "crosscoders" / name, models, x_NMHD, self.hook, self.cfg)


def run_stages(registry: dict[str, Stage], ctx: AnalysisContext, report: dict, timings: dict[str, float]) -> None:
    """Prepare the shared inputs the stages use, then run each stage, merging its sections into `report`."""
    start = time.time()

    def lap(name: str) -> None:
        timings[name] = round(time.time() - start - sum(timings.values()), 1)

    uses = {u for n in ctx.stage_names for u in registry[n].uses}
    if uses & {"train", "trio"} and not (uses <= {"eval", "trio"} and ctx.given is not None):
        _ = ctx.train
    if "eval" in uses:
        _ = ctx.eval
    lap("activations")
    if "trio" in uses:
        _ = ctx.trio
        lap("train trio")
    for name in ctx.stage_names:
        for key, section in registry[name].run(ctx).items():
            if isinstance(section, dict) and isinstance(report.get(key), dict):
                report[key].update(section)
            else:
                report[key] = section
        lap(name)


def as_numpy(x) -> np.ndarray:
    """A tensor (or array-like) as a numpy array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
