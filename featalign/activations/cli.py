"""`python -m featalign.cache`: cache N models' activations into an on-disk store.

With no arguments it caches the default organisms trio (base, rl, sft; built on first use) at the
middle residual layer `blocks.{n_layers//2-1}.hook_resid_post` (blocks.1 of the 4-layer organisms)
on the task suite's train split, 1M tokens, into $FEATALIGN_CACHE/activations/default.
Re-running the same command resumes; a larger --n-tokens appends. Another token source (other
--seed, --domains, --text-file) into the same --out is refused unless --allow-new-source. Under
torchrun each rank caches its share of the batches (gloo on CPU, nccl on GPU) and rank 0 merges
the manifests. Every argument is checked before any model is loaded.

Examples:
    python -m featalign.cache --n-tokens 200000 --out acts
    python -m featalign.cache --model base=/ckpt/base --model rl=/ckpt/rl --hook blocks.12.hook_resid_post \\
        --text-file corpus.txt --dtype bfloat16 --device cuda
    torchrun --nproc-per-node 2 -m featalign.cache --out acts
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from featalign.activations.cache import CacheConfig, cache_activations
from featalign.activations.sources import DatasetSource, TaskSetSource, TaskSuiteSource, TextSource
from featalign.cli import UsageError, check_choice, check_device, check_exists, check_out_dir, check_positive, run_cli
from featalign.distributed import cleanup, init_distributed
from featalign.model_set import ModelSet
from featalign.models import ModelGroup, ModelSpec, tokenizer_from_folder
from featalign.tasks import TaskSet


def build_parser() -> argparse.ArgumentParser:
    """The flags of the cache CLI; `--help` prints them with their defaults."""
    p = argparse.ArgumentParser(
        prog="python -m featalign.cache", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a model (local HF folder, or hub id with an optional @revision); repeat for each. "
        "Default: the organisms trio",
    )
    p.add_argument(
        "--model-set",
        default=None,
        metavar="FILE",
        help="a JSON/YAML model set (featalign.model_set.ModelSet) instead of --model flags",
    )
    p.add_argument("--preset", default="default", help="organisms preset when no --model is given (default|tiny)")
    p.add_argument(
        "--hook",
        action="append",
        default=[],
        metavar="NAME",
        help="hook point, e.g. blocks.1.hook_resid_post; repeat for several. Default: the middle layer",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="store folder (default: $FEATALIGN_CACHE/activations/<preset>)"
    )
    p.add_argument("--n-tokens", type=int, default=CacheConfig.n_tokens, help="rows the store holds when done")
    p.add_argument("--batch-size", type=int, default=CacheConfig.batch_size, help="sequences per forward pass")
    p.add_argument("--context-size", type=int, default=None, help="truncate sequences to this many tokens")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="store dtype")
    p.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--keep-bos", action="store_true", help="store BOS rows too (dropped by default)")
    p.add_argument("--shard-mb", type=float, default=CacheConfig.shard_mb)
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu | cuda | cuda:N (default: cuda when available)",
    )
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        metavar="DIR",
        help="a folder whose saved tokenizer every model uses instead of its own (e.g. for a model folder "
        "without one); loaded as saved, never rebuilt by AutoTokenizer",
    )
    p.add_argument(
        "--allow-new-source",
        action="store_true",
        help="append rows of another token source to an existing store (refused by default: it mixes sources)",
    )
    src = p.add_argument_group(
        "token source (default: the organisms' task suite, train split, the ten default domains)"
    )
    src.add_argument("--domains", default=None, help="task-suite domains, comma separated")
    src.add_argument("--seed", type=int, default=0, help="task-suite seed")
    src.add_argument("--text-file", type=Path, default=None, help="one sequence per line")
    src.add_argument("--dataset", default=None, help="a datasets.load_from_disk folder")
    src.add_argument("--column", default="text", help="dataset column (text or token ids)")
    src.add_argument(
        "--tasks",
        default=None,
        metavar="SPEC",
        help="a task set's problems as text (prompt + answer): a JSONL file, a task-set .yaml/.json, "
        "or organisms[:domains] (featalign.tasks.TaskSet.load)",
    )
    src.add_argument(
        "--tasks-split",
        default="eval",
        choices=["eval", "train", "all"],
        help="which of the task set's problems to read with --tasks",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def check_args(args) -> None:
    """Everything that can be refused before a model is loaded or a file written."""
    from featalign.organisms.config import PRESETS

    check_positive("--n-tokens", args.n_tokens)
    check_positive("--batch-size", args.batch_size)
    check_positive("--context-size", args.context_size)
    check_positive("--shard-mb", args.shard_mb)
    check_positive("--threads", args.threads)
    check_device(args.device)
    if args.out is not None:
        check_out_dir(args.out)
    if not args.model and not args.model_set:
        check_choice("--preset", args.preset, sorted(PRESETS))
    if args.tokenizer is not None:
        check_exists(args.tokenizer, "--tokenizer", "folder")
    given = [f for f, v in (("--text-file", args.text_file), ("--dataset", args.dataset), ("--tasks", args.tasks)) if v]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} are alternatives: pass one token source")
    if given and (args.domains or args.seed != 0):
        raise UsageError(f"--domains and --seed choose the task suite; they do nothing with {given[0]}: drop them")
    if args.text_file is not None:
        check_exists(args.text_file, "--text-file")
    if args.dataset is not None:
        check_exists(args.dataset, "--dataset", "folder")
    if args.tasks is not None:
        try:
            args.task_set = TaskSet.load(args.tasks)
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise UsageError(f"--tasks {args.tasks}: {e}") from e
    if args.domains is not None:
        from featalign.organisms.tasks import parse_domains

        try:
            if not parse_domains(args.domains):
                raise ValueError("no domain named")
        except (KeyError, ValueError) as e:
            raise UsageError(
                f"--domains {args.domains!r}: {e}; list them with `python -m featalign.organisms domains`"
            ) from e
    try:
        model_set = ModelSet.from_args(args.model) if args.model else None
        if args.model_set is not None:
            if model_set is not None:
                raise ValueError("give either --model-set FILE or --model NAME=PATH flags, not both")
            model_set = ModelSet.load(args.model_set)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    for spec in model_set.models if model_set is not None else []:
        if Path(spec.path).exists() and not Path(spec.path, "config.json").exists():
            raise UsageError(f"--model {spec.name}={spec.path}: not a Hugging Face model folder (no config.json)")


def _specs(args) -> tuple[list[ModelSpec], str]:
    """The models to cache and the label of their default store folder (the preset, or 'custom')."""
    if args.model or args.model_set:
        return ModelSet.resolve(args.model_set, args.model).models, "custom"
    return ModelSet.organisms(args.preset).models, args.preset


def _source(args):
    if args.text_file:
        lines = [ln for ln in args.text_file.read_text().splitlines() if ln.strip()]
        if not lines:
            raise UsageError(f"--text-file {args.text_file} has no non-empty lines: nothing to cache")
        return TextSource(lines)
    if args.tasks:
        return TaskSetSource(args.task_set, split=args.tasks_split)
    if args.dataset:
        import datasets

        return DatasetSource(datasets.load_from_disk(args.dataset), args.column)
    domains = tuple(d.strip() for d in args.domains.split(",")) if args.domains else None
    return TaskSuiteSource(domains=domains, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    """Cache the models' activations into `--out` (resumes a partial store); raises rather than exits, for `run_cli`."""
    args = build_parser().parse_args(argv)
    check_args(args)
    source = _source(args)  # reads and checks the text / dataset before any model is loaded
    cfg = CacheConfig(
        hooks=tuple(args.hook) or None,
        n_tokens=args.n_tokens,
        batch_size=args.batch_size,
        context_size=args.context_size,
        dtype=args.dtype,
        drop_bos=not args.keep_bos,
        shard_mb=args.shard_mb,
    )
    tokenizer = tokenizer_from_folder(args.tokenizer) if args.tokenizer is not None else None
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = init_distributed(args.device).rank_device(args.device)
    specs, label = _specs(args)
    if args.out is None:
        from featalign.organisms.config import default_cache_dir

        args.out = default_cache_dir() / "activations" / label
        check_out_dir(args.out)
    group = ModelGroup.load(specs, dtype=args.model_dtype, device=args.device, tokenizer=tokenizer)
    store = cache_activations(group, source, out_dir=args.out, config=cfg, allow_new_source=args.allow_new_source)
    if store is not None:
        s = store.stats()
        print(
            f"{store.root}: {len(store)} rows of [{', '.join(map(str, store.row_shape))}] ({store.layout.dtype}), "
            f"{len(store.shards)} shards; models {list(store.models)}; hooks {list(store.hooks)}"
        )
        print("mean norm per (model, hook):", [[round(v, 3) for v in r] for r in s.mean_norm_MH.tolist()])
    cleanup(barrier=False)
    return 0


def cli(prog: str = "featalign-cache") -> None:
    """Console script `featalign-cache`; also `python -m featalign.activations` and `python -m featalign.cache`."""
    sys.exit(run_cli(main, prog, sys.argv[1:]))
