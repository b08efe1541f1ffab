"""What an analysis reads: a model set (base / rl / sft and checkpoint series), a hook, text and tasks.

The organisms are one model set and their domains one task set; after `resolve_models` nothing downstream
asks which it got, except the success stage, which reads the correctness the organisms' build recorded
instead of decoding again. Activations come from an `ActivationStore` cached by the one caching path
(`featalign.activations.cache_activations`), so an interrupted run resumes and a rerun reads them back.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from featalign.activations import (
    ActivationStore,
    DomainMixtureSource,
    TaskSetSource,
    TokenSource,
    cache_activations,
    default_hook,
    resolve_hooks,
)
from featalign.activations.store import rank_manifest_name
from featalign.cli import UsageError
from featalign.model_set import ModelSet
from featalign.models import ROLES, ModelGroup, ModelSpec

TRIO_ROLES = ("base", "rl", "sft")
SERIES_ORDER = ("sft", "rl")  # drift results are reported in this order, then any other series


def open_organisms(preset: str, root: str | None):
    """A complete organisms folder is opened read-only, whatever its preset; otherwise it is built."""
    from featalign.organisms.build import Organisms, ensure_organisms

    if root and Path(root, "config.json").exists():
        org = Organisms.open(root)
        return org if org.is_complete() else ensure_organisms(org.config.preset, root)
    return ensure_organisms(preset, root)


@dataclass
class AnalysisModels:
    """The models of one analysis: `trio` = {role: spec} for base, rl and (optionally) sft, `series` = per role
    its checkpoints in training order, `organisms` the built organisms when the set is the built-in one."""

    trio: dict[str, ModelSpec]
    series: dict[str, list[ModelSpec]] = field(default_factory=dict)
    organisms: Any = None

    @property
    def trio_names(self) -> tuple[str, ...]:
        return tuple(self.trio)

    def model_dirs(self, names: Sequence[str]) -> dict[str, str]:
        """{name: folder} of trio models (what the card and success stages load)."""
        return {n: self.trio[n].path for n in names}

    def series_kinds(self) -> list[str]:
        return [k for k in SERIES_ORDER if k in self.series] + [k for k in self.series if k not in SERIES_ORDER]

    def checkpoint_series(self):
        """{role: CheckpointSeries} with the base first and checkpoints named `role@1..n` (drift's names)."""
        from featalign.analysis.drift import Checkpoint, CheckpointSeries

        return {
            kind: CheckpointSeries(
                kind,
                self.trio["base"].path,
                [Checkpoint(k, recorded_step(spec), spec.path) for k, spec in enumerate(self.series[kind], 1)],
            ).validate()
            for kind in self.series_kinds()
        }

    def columns(self, with_series: bool) -> tuple[list[ModelSpec], dict[str, str]]:
        """The store's models (trio, then checkpoints as `role@k`) and aliases: a checkpoint that is a trio
        model (the organisms' final checkpoint is their rl / sft) is read from that model's column."""
        specs = [ModelSpec(n, s.path, role=s.role, step=s.step, revision=s.revision) for n, s in self.trio.items()]
        where = {(s.path, s.revision): s.name for s in specs}
        aliases: dict[str, str] = {}
        for kind in self.series_kinds() if with_series else []:
            for k, ckpt in enumerate(self.series[kind], 1):
                name = f"{kind}@{k}"
                if (ckpt.path, ckpt.revision) in where:
                    aliases[name] = where[(ckpt.path, ckpt.revision)]
                else:
                    specs.append(
                        ModelSpec(name, ckpt.path, role="checkpoint", step=ckpt.step or k, revision=ckpt.revision)
                    )
                    where[(ckpt.path, ckpt.revision)] = name
        return specs, aliases

    def describe(self) -> dict:
        """The report's record of the models: every path (with revision) by name."""

        def where(s: ModelSpec) -> str:
            return s.path + (f"@{s.revision}" if s.revision else "")

        return {
            "trio": {n: where(s) for n, s in self.trio.items()},
            "series": {k: [where(s) for s in v] for k, v in self.series.items()},
        }


def recorded_step(spec: ModelSpec) -> int | None:
    """A checkpoint's training step: what its folder's featalign.json records (the organisms' build writes
    one), else the model set's step."""
    import json

    meta = Path(spec.path) / "featalign.json"
    step = json.loads(meta.read_text()).get("step") if meta.is_file() else None
    return spec.step if step is None else int(step)


def resolve_models(cfg) -> AnalysisModels:
    """The model set of `cfg` (an AnalyzeConfig): `--model`/`--series` flags, a `--model-set` file, or the organisms."""
    organisms = None
    try:
        if cfg.uses_organisms:
            if cfg.series:
                raise ValueError("--series needs the main models too: add --model base=DIR --model rl=DIR ...")
            organisms = open_organisms(cfg.organisms_preset, cfg.organisms_dir)
            model_set = ModelSet.organisms(organisms.config.preset, organisms.root)
        else:
            model_set = ModelSet.resolve(cfg.model_set, cfg.model, cfg.series)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    roles = {m.role: m for m in reversed(model_set.models)}  # the first model of a role wins
    missing = [r for r in ("base", "rl") if r not in roles]
    if missing:
        raise UsageError(
            f"the model set has no {' or '.join(missing)} model (roles: "
            f"{[m.role for m in model_set.models]}); analyze needs base and rl (and sft for the trio): "
            "--model base=DIR --model rl=DIR --model sft=DIR"
        )
    trio = {r: roles[r] for r in TRIO_ROLES if r in roles}
    unknown = sorted(set(model_set.series) - set(trio))
    if unknown:
        raise UsageError(
            f"--series {unknown}: a series belongs to a tuned model of the set (rl / sft), "
            f"which has roles {sorted(trio)}"
        )
    return AnalysisModels(trio, dict(model_set.series), organisms)


def n_layers_of(spec: ModelSpec) -> int:
    """Blocks of a model from its saved config, without loading its weights."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(spec.path, revision=spec.revision).num_hidden_layers)


def analysis_hook(hook: str | None, base: ModelSpec) -> str:
    """A given `hook`, or (None) the middle residual layer of `base`; a block index past the model's last is
    refused here, before any model is loaded (unknown hook names are refused once the models load). `auto` is
    measured, so it needs the models and text: `featalign.analysis.layers.resolve_hook`."""
    import re

    if hook == "auto":
        raise UsageError(
            "--hook auto is measured on the models (featalign.analysis.layers.resolve_hook); here pass a hook "
            "name, e.g. the one an analyze report.json records under 'hook'"
        )
    n_layers = n_layers_of(base)
    hook = hook or default_hook(n_layers)
    block = re.match(r"^blocks\.(\d+)\.", hook)
    if block and int(block.group(1)) >= n_layers:
        raise UsageError(f"--hook {hook}: the models have layers 0..{n_layers - 1}")
    return hook


def _store_status(root: Path, specs: list[ModelSpec], hooks: list[str], fingerprint: str, n_tokens: int) -> str:
    """'complete' (holds these models at these hooks from this source, >= n_tokens rows), 'resumable'
    (the same store, short of rows), 'other' (another store: to be replaced) or 'absent'."""
    if not (root / rank_manifest_name(0)).exists():
        return "other" if root.exists() and any(root.iterdir()) else "absent"
    from featalign.io import read_json

    part = read_json(root / rank_manifest_name(0))
    have = {m["name"]: m for m in part["layout"]["models"]}
    same_models = all(have.get(s.name) == s.to_dict() for s in specs)
    if not same_models or part["layout"]["hooks"] != hooks or fingerprint not in part["progress"]:
        return "other"
    if not (root / "manifest.json").exists() or len(ActivationStore(root)) < n_tokens:
        return "resumable" if [m["name"] for m in part["layout"]["models"]] == [s.name for s in specs] else "other"
    return "complete"


def store_activations(
    root: str | Path,
    specs: list[ModelSpec],
    hook: str | Sequence[str],
    n_tokens: int,
    source: TokenSource,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = True,
) -> torch.Tensor:
    """`[n_tokens, M, H, D]` activations of `specs` (in that order) at `hook` (H = 1; a list of hooks: H of them)
    on `source`, read from the store at `root`. The store is cached there by `cache_activations` (resuming an
    interrupted run); a store of other models, other hooks or another source is replaced, with a warning; one
    that holds more models or rows than asked is read as it is."""
    root = Path(root)
    hooks = [hook] if isinstance(hook, str) else list(hook)
    status = _store_status(root, specs, hooks, source.fingerprint(), n_tokens)
    if status != "complete":
        group = ModelGroup.load(specs, dtype=dtype, device=device)
        try:
            resolve_hooks(group.models[0], hooks)
        except KeyError as e:
            raise UsageError(f"--hook: {e.args[0]}") from e
        if status == "other":
            warnings.warn(
                f"{root} holds activations of other models, another hook or another text; recaching them", stacklevel=2
            )
            shutil.rmtree(root)
        cache_activations(group, source, hooks=hooks, out_dir=root, n_tokens=n_tokens, progress=progress)
    store = ActivationStore(root)
    x_NMHD = store.read(0, n_tokens)
    index = [store.models.index(s.name) for s in specs]
    return x_NMHD if index == list(range(len(store.models))) else x_NMHD[:, index].contiguous()


def mixture_domains(organisms) -> tuple[str, ...] | None:
    """The domains of an organisms build's text mixture: its pretraining domains (None, the sources' default,
    for the ten default ones, so that stores cached before other presets existed stay valid)."""
    from featalign.organisms.tasks import DEFAULT_DOMAINS

    if organisms is None or tuple(organisms.config.pretrain_domains) == tuple(DEFAULT_DOMAINS):
        return None
    return tuple(organisms.config.pretrain_domains)


def mixture_activations(
    root: str | Path,
    model_dirs: dict[str, str],
    hook: str,
    n_tokens: int,
    split: str,
    seed: int,
    progress: bool = True,
    domains: tuple[str, ...] | None = None,
) -> torch.Tensor:
    """`[N, M, 1, D]` activations of `model_dirs` ({name: folder}) on the organisms' domain mixture
    (`DomainMixtureSource` over `domains`, see `mixture_domains`), the text `python -m featalign.analyze` reads by
    default, via a store at `root`."""
    specs = [ModelSpec(n, str(d), role=n if n in ROLES else "other") for n, d in model_dirs.items()]
    source = DomainMixtureSource(split, seed, n_tokens, domains)
    return store_activations(root, specs, hook, n_tokens, source, progress=progress)


def organisms_train_eval(cfg, out: Path) -> tuple[tuple[str, ...], str, torch.Tensor, torch.Tensor, str]:
    """(names, hook, train, held-out activations, organisms root) of `cfg.models` ('base,rl' from the organisms'
    trio) at the default middle hook: the measurement examples' shared input. `cfg` needs `organisms_preset`,
    `organisms_dir`, `models`, `n_tokens`, `eval_tokens`, `seed` and `progress`; held-out text uses `seed + 1`."""
    org = open_organisms(cfg.organisms_preset, cfg.organisms_dir)
    trio = org.default_trio()
    names = tuple(n for n in cfg.models.split(",") if n)
    dirs = {n: str(trio[n]) for n in names}
    hook = default_hook(org.config.n_layers)
    doms = mixture_domains(org)
    x = mixture_activations(
        out / "activations" / "train", dirs, hook, cfg.n_tokens, "train", cfg.seed, cfg.progress, doms
    )
    xe = mixture_activations(
        out / "activations" / "eval", dirs, hook, cfg.eval_tokens, "eval", cfg.seed + 1, cfg.progress, doms
    )
    return names, hook, x, xe, str(org.root)


@dataclass
class Activations:
    """Rows of several models (`names`, in column order) with aliases, read by model name."""

    x_NMHD: torch.Tensor
    names: list[str]
    aliases: dict[str, str] = field(default_factory=dict)

    def columns(self, *names: str) -> torch.Tensor:
        """`[N, len(names), 1, D]`: the columns of `names` (an alias reads its model's column)."""
        return self.x_NMHD[:, [self.names.index(self.aliases.get(n, n)) for n in names]]


def text_sources(cfg, task_set, domains: tuple[str, ...] | None = None) -> tuple[TokenSource, TokenSource]:
    """(train, eval) text: the organisms' domain mixture over `domains` (`mixture_domains`; seeds seed, seed + 1)
    when no task set is given, else the task set's train problems (all problems when it has none) and its eval
    problems."""
    if task_set is None:
        return (
            DomainMixtureSource("train", cfg.seed, cfg.n_tokens, domains),
            DomainMixtureSource("eval", cfg.seed + 1, cfg.eval_tokens, domains),
        )
    train_split = "train" if any(t.train_problems for t in task_set) else "all"
    return TaskSetSource(task_set, train_split), TaskSetSource(task_set, "eval")


def load_task_set(spec: str | None, n_per_task: int | None = None, verifier: str | None = None):
    """The `--tasks` task set (None: the organisms' domains, read as their domain mixture): `TaskSet.load`'s
    specs (`organisms[:dom,...]` or a JSONL file), each task cut to its first `n_per_task` problems (an
    example's `--n-prompts`), a JSONL file's rows scored by `verifier` (`--verifier`; None: a task-set file's
    own, else exact; the organisms' domains keep their own). A missing file or a bad row is a UsageError, so a caller
    that loads the task set
    first refuses it before any work."""
    if spec is None:
        return None
    from featalign.tasks import TaskSet

    try:
        return TaskSet.load(spec, n_per_task, **({"verifier": verifier} if verifier else {}))
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise UsageError(f"--tasks {spec}: {e}") from e


def train_task_names(cfg, models: AnalysisModels) -> set[str]:
    """Tasks the tuned models were trained on (`--train-tasks`, else the organisms' post-training domains)."""
    if cfg.train_tasks:
        return {t.strip() for t in cfg.train_tasks.split(",") if t.strip()}
    return set(models.organisms.config.post_train_domains) if models.organisms is not None else set()


def success_tasks(cfg, models: AnalysisModels, task_set, progress: bool = True) -> dict:
    """{task: TaskData} of the out-of-domain tasks (every task but the training ones) with per-sample greedy
    correctness of base and rl: what the organisms' build recorded, or scored here (`score_task`) for a
    task set of the user's (the organisms' domains when none is given with other models)."""
    from featalign.analysis.success_features import TaskData, organism_tasks
    from featalign.evaluation import evaluate_tasks
    from featalign.models import load_model
    from featalign.tasks import TaskSet

    train = train_task_names(cfg, models)
    org = models.organisms
    if task_set is None and org is not None:
        chosen = [d for d in org.config.pretrain_domains if d not in train] if cfg.train_tasks else None
        return organism_tasks(org, tasks=chosen)
    task_set = task_set if task_set is not None else TaskSet.organisms()
    unknown = sorted(train - set(task_set.names))
    if cfg.train_tasks and unknown:
        raise UsageError(f"--train-tasks {sorted(unknown)}: not tasks of the task set ({task_set.names})")
    out_of_domain = task_set.subset([t for t in task_set.names if t not in train])
    correct = {}
    for role in ("base", "rl"):
        spec = models.trio[role]
        model = load_model(spec.path, dtype=cfg.model_dtype, device=cfg.device, revision=spec.revision)
        correct[role] = evaluate_tasks(model, model.tokenizer, out_of_domain, desc=f"score {role}")
    return {t.name: TaskData(list(t.problems), correct["base"][t.name], correct["rl"][t.name]) for t in out_of_domain}
