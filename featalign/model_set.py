"""Model sets: the models of one study with their roles and checkpoint series, from any source.

A user's study is a base model, its RL- and SFT-tuned descendants and their checkpoints, as local
folders or hub ids at a revision (`Qwen/Qwen2.5-Math-1.5B@main`). The organisms are one built-in
model set (`ModelSet.organisms()`), still every CLI's default; nothing downstream knows which it got.

On the command line a set is `--model base=DIR --model rl=DIR --series rl=DIR1,DIR2,...`; in a file it is
`{"models": [{"name": "base", "path": "...", "role": "base"}, ...], "series": {"rl": [...]}}` (JSON or YAML).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featalign.config import JsonConfig
from featalign.models import ROLES, ModelGroup, ModelSpec
from featalign.organisms.build import ensure_organisms

__all__ = ["ModelSet", "parse_model_arg", "split_revision"]


def split_revision(path: str) -> tuple[str, str | None]:
    """`org/name@rev` -> (`org/name`, `rev`); a local path that exists is never split."""
    if "@" in path and not Path(path).expanduser().exists():
        base, _, rev = path.rpartition("@")
        if base and rev:
            return base, rev
    return path, None


def _spec(name: str, path: str | Path, role: str | None = None, step: int | None = None) -> ModelSpec:
    role = role or (name if name in ROLES else "other")
    path, revision = split_revision(str(path))
    return ModelSpec(name, path, role=role, step=step, revision=revision)


def parse_model_arg(arg: str) -> ModelSpec:
    """`name=path[@revision]` (name a role such as base / rl / sft, or any label) -> a ModelSpec."""
    name, sep, path = arg.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ValueError(
            f"--model {arg!r}: write NAME=PATH, e.g. --model base=/ckpt/qwen-base or "
            "--model rl=Qwen/Qwen2.5-Math-1.5B@main"
        )
    return _spec(name.strip(), path.strip())


@dataclass
class ModelSet(JsonConfig):
    """Main models (`models`, in the order of every store and crosscoder built from them) and, per role,
    a checkpoint series in training order (`series['rl'] = [ckpt-1, ..., final]`)."""

    models: list[ModelSpec]
    series: dict[str, list[ModelSpec]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.models = [m if isinstance(m, ModelSpec) else ModelSpec.from_dict(m) for m in self.models]
        self.series = {
            k: [m if isinstance(m, ModelSpec) else ModelSpec.from_dict(m) for m in v] for k, v in self.series.items()
        }
        if not self.models:
            raise ValueError("a model set needs at least one model: --model base=DIR (and rl=DIR, sft=DIR ...)")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        for key, ckpts in self.series.items():
            if not ckpts:
                raise ValueError(f"series {key!r} is empty: give its checkpoints in training order")

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def __getitem__(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model {name!r} in this model set; it has {self.names}")

    def role(self, role: str) -> ModelSpec:
        """The (first) main model with `role`, e.g. the base."""
        for m in self.models:
            if m.role == role:
                return m
        raise KeyError(
            f"no model with role {role!r} in this model set (roles: {[m.role for m in self.models]}); "
            f"add one with --model {role}=DIR"
        )

    def group(self, dtype: str = "float32", device: str = "cpu", names: Sequence[str] | None = None) -> ModelGroup:
        """Load the main models (or `names` of them) as a `ModelGroup`."""
        specs = [self[n] for n in names] if names is not None else self.models
        return ModelGroup.load(specs, dtype=dtype, device=device)

    # --- sources --------------------------------------------------------------------------------

    @classmethod
    def organisms(
        cls, preset: str = "default", out_dir: str | Path | None = None, domain: str | None = None
    ) -> ModelSet:
        """The built-in organisms (built on first use): base, rl, sft, and the rl / sft checkpoint series."""
        org = ensure_organisms(preset, out_dir)
        domain = domain or org.config.post_train_domains[0]
        n = org.config.n_checkpoints
        return cls(
            [
                _spec("base", org.model_dir("base")),
                _spec("rl", org.model_dir("rl", domain)),
                _spec("sft", org.model_dir("sft", domain)),
            ],
            {
                kind: [
                    _spec(f"{kind}-ckpt{k}", org.model_dir(kind, domain, k), "checkpoint", k) for k in range(1, n + 1)
                ]
                for kind in ("rl", "sft")
            },
        )

    @classmethod
    def from_args(cls, models: Sequence[str], series: Sequence[str] = ()) -> ModelSet:
        """From CLI strings: `models` = ['base=DIR', 'rl=DIR@rev', ...], `series` = ['rl=DIR1,DIR2', ...]."""
        specs = [parse_model_arg(a) for a in models]
        out: dict[str, list[ModelSpec]] = {}
        for arg in series:
            key, sep, paths = arg.partition("=")
            dirs = [p.strip() for p in paths.split(",") if p.strip()]
            if not sep or not key.strip() or not dirs:
                raise ValueError(f"--series {arg!r}: write ROLE=DIR1,DIR2,... (checkpoints in training order)")
            key = key.strip()
            out[key] = [_spec(f"{key}-ckpt{k}", p, "checkpoint", k) for k, p in enumerate(dirs, 1)]
        return cls(specs, out)

    @classmethod
    def load(cls, path: str | Path) -> ModelSet:
        """From a JSON or YAML file (see the module docstring for the layout)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model-set file {path} does not exist")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data: Any = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict) or "models" not in data:
            raise ValueError(f"{path}: a model set is a mapping with a 'models' list (and optional 'series')")
        return cls.from_dict(data)

    @classmethod
    def resolve(
        cls, spec: str | None = None, models: Sequence[str] = (), series: Sequence[str] = (), preset: str = "default"
    ) -> ModelSet:
        """The one CLI rule: `--model`/`--series` flags, else a model-set file, else the organisms."""
        if models:
            if spec:
                raise ValueError("give either --model-set FILE or --model NAME=DIR flags, not both")
            return cls.from_args(models, series)
        if series:
            raise ValueError("--series needs the main models too: add --model base=DIR --model rl=DIR ...")
        if spec:
            return cls.load(spec)
        return cls.organisms(preset)
