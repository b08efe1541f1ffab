"""`python -m featalign.train_crosscoder`: train an N-model crosscoder.

With no arguments: build (or reuse) the default organisms, cache the base / RL / SFT models'
activations at a middle residual layer, train an L1 crosscoder (2048 latents), evaluate it (FVU, L0, dead
fraction, splice-in loss per model) and print where everything is. Rerunning the same command
resumes from the last checkpoint. Config comes from flags and/or `--config file.{json,yaml}`
(`{"crosscoder": {...}, "trainer": {...}, "run": {...}}`); flags win.

Distributed: `torchrun --nproc_per_node=2 -m featalign.train_crosscoder ...` (gloo on CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from featalign.cli import UsageError, check_choice, check_device, check_exists, check_out_dir, check_positive, run_cli
from featalign.config import JsonConfig, parse_bool
from featalign.crosscoder.config import CrosscoderConfig, TrainerConfig
from featalign.crosscoder.variants import REGISTRY, field_help
from featalign.distributed import cleanup, init_distributed, torchrun_world_size
from featalign.model_set import ModelSet

# Flag help comes from each config field's `help` metadata (featalign.crosscoder.variants.help_field); the
# variant's fields get one flag each, shared by the variants that have a field of that name.
# `seed` exists in both configs; the trainer's is exposed as --train-seed.
TRAINER_RENAMES = {"seed": "train_seed"}
TRAINER_HELP = {
    "seed": "seed of the training data order (batch shuffling), the normalisation estimate and "
    "dead-latent resampling (--seed seeds the weight initialisation)"
}
# Crosscoder fields whose default is resolved at run time from the activation source, not the dataclass default.
RUNTIME_DEFAULTS = {
    "models": "the store's / file's models; for the organisms base,rl,sft",
    "hooks": "the store's / file's hooks; for the organisms the middle residual layer "
    "blocks.<n_layers/2-1>.hook_resid_post",
    "d_model": "the activations' width",
}


@dataclasses.dataclass
class RunOptions(JsonConfig):
    """Where the activations come from and where the run goes (the `run` section of a config file)."""

    out: str = "runs/crosscoder"
    organisms_preset: str = "default"
    organisms_dir: str | None = None
    model_dirs: str | None = None
    n_tokens: int = 400_000
    eval_tokens: int = 20_000
    splice_seqs: int = 256
    activations: str | None = None
    store: str | None = None
    eval_store: str | None = None
    no_eval: bool = False
    fresh: bool = False
    log_to: str = ""
    threads: int = 0
    device: str = "cpu"
    sae_baseline: bool = False
    sae_k: int | None = None

    def __post_init__(self) -> None:
        from featalign.organisms.config import PRESETS

        check_positive("--n-tokens", self.n_tokens)
        if not self.no_eval:
            check_positive("--eval-tokens", self.eval_tokens)
        check_positive("--splice-seqs", self.splice_seqs, allow_zero=True)
        check_positive("--threads", self.threads, allow_zero=True)
        check_choice("--organisms-preset", self.organisms_preset, sorted(PRESETS))
        for sink in filter(None, self.log_to.split(",")):
            check_choice("--log-to", sink, LOG_SINKS)
        given = [f"--{n.replace('_', '-')}" for n in ("activations", "store", "model_dirs") if getattr(self, n)]
        if len(given) > 1:
            raise UsageError(f"{' and '.join(given)} are alternatives (the activation source): pass one of them")
        if self.eval_store and not self.store:
            raise UsageError("--eval-store is the held-out partner of --store: pass --store too")


LOG_SINKS = ("tensorboard", "wandb")
# Where this command's default differs from TrainerConfig's (the library's): bf16 autocast where the device's
# bf16 matmuls are faster than fp32 (`bf16_matmul_is_fast`, resolved at start and saved in cfg.json); on the
# organisms bf16's held-out FVU and dead fraction match fp32's (docs/crosscoder.md, "bf16 by default").
# --bf16 true / false overrides it.
CLI_TRAINER_DEFAULTS: dict[str, Any] = {}
CLI_TRAINER_DEFAULT_HELP = {"bf16": "true where the device's bf16 matmul is faster than fp32, measured at start"}

RUN_HELP = {
    "out": "output directory (cfg.json, crosscoder.safetensors, metrics.jsonl, eval.json, checkpoint.pt)",
    "organisms_preset": "organisms preset to build/reuse when no --store/--activations is given: default | tiny",
    "organisms_dir": "organisms folder (default: the featalign cache dir for the preset)",
    "model_dirs": "name=path pairs, comma-separated (e.g. base=/ckpt/base,rl=/ckpt/grpo), or a model-set file "
    "(JSON/YAML): cache these HF models instead of the organisms trio",
    "n_tokens": "tokens of activations to cache for training (organisms path; into <out>/activations)",
    "eval_tokens": "held-out tokens (eval split, <out>/eval_activations) for the final FVU / L0 / dead evaluation",
    "splice_seqs": "eval sequences for the splice-in loss (0 skips it)",
    "activations": "a .safetensors file with an 'acts' tensor [N, M, H, D] to train on instead of caching",
    "store": "an ActivationStore directory (featalign.activations) to train on",
    "eval_store": "a held-out ActivationStore (same models and hooks, other text) for the final evaluation with "
    "--store; without it the last --eval-tokens rows of the training store are used (in-sample)",
    "no_eval": "skip the final evaluation",
    "fresh": "delete --out before starting instead of resuming",
    "log_to": "extra metric sinks, comma-separated: tensorboard, wandb (JSONL is always written)",
    "threads": "torch CPU threads (0 = torch default: every core, or OMP_NUM_THREADS; 1 is steadier on a CPU "
    "that other jobs keep busy)",
    "device": "cpu | cuda",
    "sae_baseline": "also train the sae_lens BatchTopK SAE on the base model's activations (into <out>/sae_baseline)",
    "sae_k": "k of the baseline SAE (default: the crosscoder variant's k if it has one, else 32)",
}


def _add_field(p: argparse._ActionsContainer, f: dataclasses.Field, dest: str, help_text: str, default: Any) -> None:
    """`default`: the value shown in --help, or a `str` describing a default resolved at run time."""
    flag = "--" + dest.replace("_", "-")
    t = str(f.type)
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    if "tuple" in t:
        conv: Callable[[str], Any] = float if "float" in t else str
        p.add_argument(
            flag,
            dest=dest,
            type=lambda s: tuple(conv(x) for x in s.split(",") if x),
            default=None,
            help=f"{help_text} (default: {default})",
        )
    elif t == "bool":
        p.add_argument(flag, dest=dest, type=parse_bool, default=None, help=f"{help_text} (default: {default})")
    else:
        typ = {"int": int, "float": float}.get(t.split(" ")[0], str)
        if "int | None" in t or "str | None" in t:
            typ = int if "int" in t else str
        p.add_argument(flag, dest=dest, type=typ, default=None, help=f"{help_text} (default: {default})")


def build_parser() -> argparse.ArgumentParser:
    """The flags of train_crosscoder: the crosscoder, the variant's, the trainer's and the run's fields."""
    p = argparse.ArgumentParser(
        prog="python -m featalign.train_crosscoder",
        description=__doc__.split("\n\n")[1] + " " + __doc__.split("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="JSON or YAML file with 'crosscoder', 'trainer' and 'run' sections")
    g = p.add_argument_group("run")
    for f in dataclasses.fields(RunOptions):
        if f.type == "bool":
            g.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                action="store_true",
                default=None,
                help=RUN_HELP.get(f.name, ""),
            )
        else:
            _add_field(g, f, f.name, RUN_HELP.get(f.name, ""), f.default)
    g = p.add_argument_group("crosscoder")
    for f in dataclasses.fields(CrosscoderConfig):
        if f.name == "variant":
            _add_field(g, f, f.name, f"{field_help(f)}: {' | '.join(REGISTRY)}", f.default)
        elif f.name != "variant_cfg":
            _add_field(g, f, f.name, field_help(f), RUNTIME_DEFAULTS.get(f.name, f.default))
    g = p.add_argument_group("variant", "the chosen --variant's own fields (a field of another variant is refused)")
    for name, (f, owners) in variant_fields().items():
        defaults = {getattr(REGISTRY[v].Config(), name) for v in owners}
        default = defaults.pop() if len(defaults) == 1 else "per variant"
        _add_field(g, f, name, f"{', '.join(owners)}: {field_help(f)}", default)
    g = p.add_argument_group("trainer")
    for f in dataclasses.fields(TrainerConfig):
        default = CLI_TRAINER_DEFAULT_HELP.get(f.name, CLI_TRAINER_DEFAULTS.get(f.name, f.default))
        _add_field(g, f, TRAINER_RENAMES.get(f.name, f.name), TRAINER_HELP.get(f.name, field_help(f)), default)
    return p


def variant_fields() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Every registered variant's config fields by name: (the field, the variants that have it)."""
    out: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for vname, cls in REGISTRY.items():
        for f in dataclasses.fields(cls.Config):
            out.setdefault(f.name, (f, []))[1].append(vname)
    return out


def _load_file(path: str) -> dict:
    text = check_exists(path, "--config").read_text()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            d = yaml.safe_load(text) or {}
        else:
            d = json.loads(text)
    except ValueError as e:  # json.JSONDecodeError and yaml.YAMLError's message name the line
        raise UsageError(
            f"--config {path} is not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {e}"
        ) from e
    except Exception as e:  # yaml.YAMLError is not a ValueError
        raise UsageError(f"--config {path} is not valid YAML: {e}") from e
    if not isinstance(d, dict):
        raise UsageError(f"--config {path} must hold a mapping with 'crosscoder', 'trainer' and 'run' sections")
    unknown = set(d) - {"crosscoder", "trainer", "run"}
    if unknown:
        raise UsageError(f"{path}: unknown section(s) {sorted(unknown)}; use 'crosscoder', 'trainer', 'run'")
    for section, v in d.items():
        if not isinstance(v, dict):
            raise UsageError(f"{path}: section {section!r} must be a mapping of field: value, got {v!r}")
    return d


def resolve_configs(argv: Sequence[str] | None = None) -> tuple[dict, dict, RunOptions]:
    """Flags over file over defaults -> (crosscoder overrides, trainer overrides, run options)."""
    args = build_parser().parse_args(argv)
    file = _load_file(args.config) if args.config else {}
    cc = dict(file.get("crosscoder", {}))
    tr = dict(file.get("trainer", {}))
    run = dict(file.get("run", {}))
    for f in dataclasses.fields(CrosscoderConfig):
        if f.name != "variant_cfg" and getattr(args, f.name) is not None:
            cc[f.name] = getattr(args, f.name)
    flags = {k: getattr(args, k) for k in variant_fields() if getattr(args, k) is not None}
    if flags:
        variant = cc.get("variant", CrosscoderConfig.variant)
        own = {f.name for f in dataclasses.fields(REGISTRY[variant].Config)} if variant in REGISTRY else set(flags)
        alien = sorted(set(flags) - own)
        if alien:
            raise SystemExit(
                f"--{', --'.join(a.replace('_', '-') for a in alien)}: not a field of variant "
                f"{variant!r} (its fields: {', '.join(sorted(own)) or 'none'})"
            )
        cc["variant_cfg"] = {**dict(cc.get("variant_cfg") or {}), **flags}
    for f in dataclasses.fields(TrainerConfig):
        v = getattr(args, TRAINER_RENAMES.get(f.name, f.name))
        if v is not None:
            tr[f.name] = v
    for f in dataclasses.fields(RunOptions):
        if getattr(args, f.name) is not None:
            run[f.name] = getattr(args, f.name)
    try:
        run_opts = RunOptions.from_dict(run)
        # Refuse a bad crosscoder / trainer field now, before any caching: the fields resolved from the
        # activation source later (models, hooks, d_model) are checked here at their defaults.
        CrosscoderConfig.from_dict(cc)
        TrainerConfig.from_dict(tr)
    except UsageError:
        raise
    except (ValueError, TypeError) as e:
        raise UsageError(f"{e} (in --config {args.config} or the flags)" if args.config else str(e)) from e
    return cc, tr, run_opts


def check_run(run: RunOptions) -> None:
    """Every check on the paths and the device that can run before anything is loaded or written."""
    check_device(run.device)
    check_out_dir(run.out)
    for name in ("activations", "store", "eval_store"):
        if getattr(run, name):
            check_exists(
                getattr(run, name), f"--{name.replace('_', '-')}", "file" if name == "activations" else "folder"
            )
    if run.organisms_dir and Path(run.organisms_dir).exists():
        check_exists(run.organisms_dir, "--organisms-dir", "folder")
    if run.model_dirs:
        _parse_model_dirs(run.model_dirs)


def _check_organism_names(cc: dict, run: RunOptions) -> None:
    """On the organisms path the models are the trio: a typo in --models is refused before any build."""
    if run.activations or run.store or run.model_dirs or "models" not in cc:
        return
    unknown = [n for n in cc["models"] if n not in ("base", "rl", "sft")]
    if unknown:
        raise UsageError(
            f"unknown model(s) {unknown} for the organisms: choose from base, rl, sft (or name other "
            "models with --model-dirs name=path,... or train on a --store)"
        )


def _parse_model_dirs(spec: str) -> dict[str, str]:
    """`name=path,...` or a model-set file (`featalign.model_set.ModelSet`, JSON/YAML: its main models)
    -> {name: path}, each path an existing model folder."""
    out: dict[str, str] = {}
    if Path(spec).suffix in (".json", ".yaml", ".yml"):
        try:
            models = ModelSet.load(spec).models
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise UsageError(f"--model-dirs {spec}: {e}") from e
        if any(m.revision for m in models):
            raise UsageError(
                f"--model-dirs {spec}: hub revisions are cached by `python -m featalign.cache "
                "--model-set FILE`; train on that store with --store"
            )
        spec = ",".join(f"{m.name}={m.path}" for m in models)
    for item in filter(None, spec.split(",")):
        if "=" not in item:
            raise UsageError(f"--model-dirs expects name=path pairs, comma-separated; got {item!r}")
        name, path = item.split("=", 1)
        if name in out:
            raise UsageError(f"--model-dirs names {name!r} twice")
        if not Path(path, "config.json").exists():
            raise UsageError(f"--model-dirs {name}={path}: not a Hugging Face model folder (no config.json)")
        out[name] = path
    if not out:
        raise UsageError("--model-dirs is empty: pass name=path pairs")
    return out


def _activations_file(path: str, cc: dict, eval_tokens: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(training rows, eval rows, in_sample) of an `--activations` file; names its models and hooks in `cc`.

    The file's safetensors metadata may name them (`models`, `hooks` or `hook`, comma-separated, as
    `featalign.analyze` writes); --models / --hooks win. A file that names neither needs the flags, so
    no run is ever labelled with invented names. Without an `eval_acts` tensor the evaluation uses the
    last rows of the training tensor, which is in-sample and is reported as such."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        t = load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise UsageError(f"--activations {path} is not a readable .safetensors file ({e})") from e
    if "acts" not in t:
        raise UsageError(f"--activations {path} must hold an 'acts' tensor [N, M, H, D]; it has {sorted(t)}")
    x = t["acts"]
    if x.ndim != 4:
        raise UsageError(f"--activations {path}: 'acts' has shape {list(x.shape)}, expected [N, M, H, D]")
    named = {"models": meta.get("models"), "hooks": meta.get("hooks") or meta.get("hook")}
    for key, flag in (("models", "--models"), ("hooks", "--hooks")):
        spec = named[key]
        if key not in cc and spec:
            cc[key] = tuple(spec.split(","))
        if key not in cc:
            raise UsageError(
                f"--activations {path} does not name its {key} (no '{key}' in the file's safetensors metadata): "
                f"pass {flag} a,b,... in the order of the tensor's {'model' if key == 'models' else 'hook'} axis"
            )
    cc.setdefault("d_model", x.shape[-1])
    if tuple(x.shape[1:3]) != (len(cc["models"]), len(cc["hooks"])):
        raise UsageError(
            f"activations have shape [N, {', '.join(map(str, x.shape[1:]))}] but the config expects "
            f"[N, {len(cc['models'])}, {len(cc['hooks'])}, {cc['d_model']}] (models {tuple(cc['models'])}, "
            f"hooks {tuple(cc['hooks'])}); fix --models/--hooks or the activations"
        )
    if "eval_acts" in t:
        return x, t["eval_acts"], False
    return x, x[-eval_tokens:], True


def _sources(cc: dict, tr: dict, run: RunOptions, out: Path, dist_info):
    """(training source, eval activations [N, M, H, D] or None, model dirs for splice-in, in_sample).

    --activations: an in-memory tensor file; --store: an existing ActivationStore; otherwise the
    organisms' base/RL/SFT activations are cached (resumably) into <out>/activations with
    featalign.activations.cache_activations, plus an eval-split store for the final evaluation.
    `in_sample` says whether the eval rows are rows the crosscoder also trains on.
    """
    from featalign.activations import ActivationStore
    from featalign.crosscoder.data import InMemoryActivations

    batch, seed = int(tr.get("batch_size", TrainerConfig.batch_size)), int(tr.get("seed", TrainerConfig.seed))
    r, w = dist_info.rank, dist_info.world_size
    if run.activations:
        x, x_eval, in_sample = _activations_file(run.activations, cc, run.eval_tokens)
        if in_sample and not run.no_eval:
            warnings.warn(
                f"{run.activations} has no 'eval_acts' tensor: evaluating on its last {len(x_eval)} rows, "
                "which the crosscoder also trains on (in-sample FVU); add held-out rows as 'eval_acts'",
                stacklevel=2,
            )
        src = InMemoryActivations(
            x, batch, seed=seed, models=tuple(cc["models"]), hooks=tuple(cc["hooks"]), rank=r, world_size=w
        )
        return src, x_eval, {}, in_sample
    if run.store:
        store, eval_x, model_dirs = ActivationStore(Path(run.store)), None, {}
        cc.setdefault("models", store.models)
        cc.setdefault("hooks", store.hooks)
    else:
        store, eval_x, model_dirs = _cache_models(cc, run, out, dist_info)
    cc.setdefault("d_model", store.row_shape[-1])
    in_sample = False
    if eval_x is None and not run.no_eval:
        eval_x, in_sample = _eval_rows(store, run)
    return store.loader(batch, seed=seed, rank=r, world_size=w), eval_x, model_dirs, in_sample


def _cache_models(cc: dict, run: RunOptions, out: Path, dist_info):
    """Without --store: cache the named models' (default: the organisms trio's) activations into <out>, resumably;
    returns (training store, eval rows or None, model dirs)."""
    from featalign.activations import ActivationStore, TaskSuiteSource, cache_activations
    from featalign.models import default_hook, default_hook_for

    eval_x = None
    trio: Mapping[str, str | Path]  # name -> model folder
    if run.model_dirs:
        trio = _parse_model_dirs(run.model_dirs)
        default = default_hook_for(next(iter(trio.values())))
    else:
        from featalign.organisms.build import ensure_organisms

        if dist_info.is_main:
            ensure_organisms(run.organisms_preset, run.organisms_dir)
        if dist_info.enabled:
            torch.distributed.barrier()
        org = ensure_organisms(run.organisms_preset, run.organisms_dir)
        trio, default = org.default_trio(), default_hook(org.config.n_layers)
    names = tuple(cc.get("models", tuple(trio)))
    unknown = [n for n in names if n not in trio]
    if unknown:
        raise UsageError(
            f"unknown model(s) {unknown}; available: {sorted(trio)} (name them with "
            "--model-dirs name=path,... or cache a store with `python -m featalign.cache` and pass --store)"
        )
    model_dirs = {n: str(trio[n]) for n in names}
    cc.setdefault("models", names)
    cc.setdefault("hooks", (default,))
    if dist_info.is_main:  # resumable; a finished store is reused as is
        cache_activations(
            model_dirs,
            TaskSuiteSource(split="train"),
            hooks=cc["hooks"],
            out_dir=out / "activations",
            n_tokens=run.n_tokens,
            rank=0,
            world_size=1,
        )
        if not run.no_eval:
            cache_activations(
                model_dirs,
                TaskSuiteSource(split="eval", seed=1),
                hooks=cc["hooks"],
                out_dir=out / "eval_activations",
                n_tokens=run.eval_tokens,
                rank=0,
                world_size=1,
            )
    if dist_info.enabled:
        torch.distributed.barrier()
    store = ActivationStore(out / "activations")
    if not run.no_eval:
        eval_x = ActivationStore(out / "eval_activations").read()
    return store, eval_x, model_dirs


def _eval_rows(store, run: RunOptions):
    """(eval rows, in_sample): --eval-store's first rows, else the training store's last (in-sample, warned)."""
    from featalign.activations import ActivationStore

    in_sample = False
    if run.eval_store:
        held = ActivationStore(Path(run.eval_store))
        if (held.models, held.hooks, held.row_shape) != (store.models, store.hooks, store.row_shape):
            raise UsageError(
                f"--eval-store holds models {held.models}, hooks {held.hooks}, rows {held.row_shape}; "
                f"the training store has {store.models}, {store.hooks}, {store.row_shape}: "
                "cache the held-out text with the same models and hooks"
            )
        eval_x = held.read(0, run.eval_tokens)
    else:
        eval_x = store.read(max(0, len(store) - run.eval_tokens))
        in_sample = True
        warnings.warn(
            f"evaluating on the last {len(eval_x)} rows of the training store, which the crosscoder "
            "also trains on (in-sample FVU); pass --eval-store with activations of held-out text",
            stacklevel=2,
        )
    return eval_x, in_sample


def main(argv: Sequence[str] | None = None) -> dict:
    """Train (or resume) one crosscoder into `--out` and evaluate it; raises rather than exits, for `run_cli`."""
    from featalign.crosscoder.evaluate import evaluate, splice_in_loss
    from featalign.crosscoder.train import Trainer, bf16_matmul_is_fast
    from featalign.io import atomic_write_json

    cc, tr, run = resolve_configs(argv)
    tr = {**CLI_TRAINER_DEFAULTS, **tr}
    check_run(run)
    _check_organism_names(cc, run)
    if run.threads:
        torch.set_num_threads(run.threads)
    dist_info = init_distributed(run.device)
    device = dist_info.rank_device(run.device)
    if device != run.device:  # one GPU per rank under torchrun
        torch.cuda.set_device(device)
    if "bf16" not in tr:
        tr["bf16"] = bf16_matmul_is_fast(device)
        if dist_info.enabled:  # every rank must take the same step: rank 0's measurement decides
            flag = torch.tensor([int(tr["bf16"])], device=device)
            torch.distributed.broadcast(flag, 0)
            tr["bf16"] = bool(flag.item())
    out = Path(run.out)
    if run.fresh and dist_info.is_main and out.exists():
        shutil.rmtree(out)
    if dist_info.enabled:
        torch.distributed.barrier()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    finished = False
    try:
        source, x_eval, model_dirs, in_sample = _sources(cc, tr, run, out, dist_info)
        cfg = CrosscoderConfig.from_dict(cc)
        tcfg = TrainerConfig.from_dict(tr)
        loggers = tuple(s for s in run.log_to.split(",") if s)
        model = Trainer(cfg, tcfg, source, out, dist_info=dist_info, loggers=loggers, device=device).train()
        report: dict = {"out": str(out)}
        if dist_info.is_main and not run.no_eval:
            model = model.cpu().eval()
            ev = evaluate(model, x_eval)
            ev["in_sample"] = in_sample  # evaluated on rows the crosscoder trained on
            if model_dirs and run.splice_seqs > 0:
                for name, r in splice_in_loss(model, model_dirs, n_seqs=run.splice_seqs).items():
                    ev["per_model"][name]["splice"] = r
            atomic_write_json(out / "eval.json", ev)
            report["eval"] = ev
        if dist_info.is_main and run.sae_baseline:
            from featalign.crosscoder.sae_baseline import sae_baseline_eval, train_base_sae

            base = cfg.models.index("base") if "base" in cfg.models else 0
            sae_dir = out / "sae_baseline"
            source.load_state_dict({"epoch": 0, "pos": 0, "seed": tcfg.seed, "batch_size": tcfg.batch_size})
            sae_k = run.sae_k or int(getattr(cfg.variant_cfg, "k", 32))
            sae = train_base_sae(
                source, sae_dir, model_index=base, steps=tcfg.steps, k=sae_k, d_sae=cfg.n_latents, lr=tcfg.lr
            )
            report["sae_baseline"] = {"dir": str(sae_dir)}
            if x_eval is not None:
                report["sae_baseline"]["eval"] = sae_baseline_eval(sae, x_eval, cfg.models)
                atomic_write_json(sae_dir / "featalign_eval.json", report["sae_baseline"]["eval"])
                print(
                    "base SAE (sae_lens) applied to every model: "
                    + ", ".join(
                        f"{k} FVU {v['fvu']:.4f} L0 {v['l0']:.1f}" for k, v in report["sae_baseline"]["eval"].items()
                    )
                )
        if dist_info.is_main:
            _print_report(out, report)
        finished = True
        return report
    except BaseException:
        if created and dist_info.is_main and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # failed before writing anything: leave no half-made --out
        raise
    finally:
        cleanup(barrier=finished)


def _print_report(out: Path, report: dict) -> None:
    print(f"\ncrosscoder written to {out}/ (cfg.json, crosscoder.safetensors, metrics.jsonl, checkpoint.pt)")
    print(f"load it with: featalign.crosscoder.Crosscoder.load({str(out)!r})")
    ev = report.get("eval")
    if ev:
        print(
            f"eval ({ev['n_tokens']} {'in-sample' if ev.get('in_sample') else 'held-out'} tokens): "
            f"L0 {ev['l0']:.1f}, dead {ev['dead_frac']:.3%}"
        )
        for name, r in ev["per_model"].items():
            line = f"  {name:>6}: FVU {r['fvu']:.4f}"
            if "splice" in r:
                s = r["splice"]
                line += (
                    f"  splice-in loss {s['spliced']:.4f} (clean {s['clean']:.4f}, zero-abl {s['zero']:.4f},"
                    f" recovered {s['loss_recovered']:.3f})"
                )
            print(line)
        print(f"  -> {out / 'eval.json'}")


def cli(prog: str = "featalign-train-crosscoder") -> None:
    """Console script `featalign-train-crosscoder`; also `python -m featalign.crosscoder` and
    `python -m featalign.train_crosscoder`."""
    rc = run_cli(main, prog, sys.argv[1:])
    if torchrun_world_size() > 1:
        # Under torchrun, skip interpreter finalisation: gloo worker threads still alive there
        # intermittently abort the process ("terminate called without an active exception")
        # after all results are written. Everything is flushed and the process group destroyed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)
