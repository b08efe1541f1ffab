"""Token sources: deterministic streams of token-id sequences, the same for every model.

A source yields one `list[int]` per sequence (BOS included, as the models expect it) and has a
`fingerprint()` that the store records, so a resumed run can prove it continues the same stream.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from featalign.organisms.tasks import Problem
    from featalign.tasks import TaskSet


@runtime_checkable
class TokenSource(Protocol):
    """Anything that yields token-id sequences for a tokenizer and fingerprints itself, so a resumed
    cache can prove it continues the same stream."""

    def sequences(self, tokenizer) -> Iterator[list[int]]: ...

    def fingerprint(self) -> str: ...


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _encode(tokenizer, text: str) -> list[int]:
    """The tokenizer's own call (which prepends BOS where the model family does)."""
    return list(tokenizer(text)["input_ids"])


@dataclass
class TaskSuiteSource:
    """The organisms' task suite (the default): prompt + answer + <eos>, domains interleaved.

    An endless stream: chunk k draws `chunk` problems per domain with seed (seed, k) from `split`,
    so any number of tokens is available and the stream is identical on every run.
    """

    domains: tuple[str, ...] | None = None  # None: the ten default domains (DEFAULT_DOMAINS)
    split: str = "train"
    seed: int = 0
    include_answer: bool = True
    append_eos: bool = True
    chunk: int = 256

    def __post_init__(self) -> None:
        from featalign.organisms.tasks import parse_domains

        if self.domains is not None:
            self.domains = tuple(parse_domains(self.domains))
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")

    def sequences(self, tokenizer) -> Iterator[list[int]]:
        from featalign.organisms.tasks import DEFAULT_DOMAINS, sample_problems

        domains = list(self.domains or DEFAULT_DOMAINS)
        eos = tokenizer.eos_token_id
        for k in itertools.count():
            per_domain = [
                sample_problems(d, self.chunk, self.split, seed=self.seed * 1_000_003 + k, unique=False)
                for d in domains
            ]
            for probs in zip(*per_domain):
                for p in probs:
                    ids = _encode(tokenizer, p.prompt + (p.answer if self.include_answer else ""))
                    if self.append_eos and self.include_answer and eos is not None:
                        ids.append(eos)
                    yield ids

    def fingerprint(self) -> str:
        return "tasks:" + _hash(self.__dict__)


def encode_problem(tokenizer, problem: Problem) -> list[int]:
    """`<bos> prompt answer <eos>` exactly as the organisms are trained on it (`organisms.train.encode_supervised`):
    the prompt through the tokenizer's own call (BOS where the family prepends one), the answer without
    special tokens, then eos (when the tokenizer has one)."""
    ids = list(tokenizer(problem.prompt)["input_ids"])
    ids += list(tokenizer(problem.answer, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


@dataclass
class DomainMixtureSource:
    """The organisms' domains as `python -m featalign.analyze` has always read them: rounds of
    `sample_mixture(domains, n, split, seed * 1000 + round)`, each problem `<bos> prompt answer <eos>`.

    Round r draws `max(64, (n_tokens - rows so far) // 24 + 64)` problems, so the stream (and every number
    computed on it) equals the in-process collector it replaces; that is why `n_tokens` is part of the
    source and its fingerprint. Rows so far count every token but the first (BOS) of each sequence.
    Endless: after `n_tokens` rows it keeps drawing rounds of 64 problems.
    """

    split: str = "train"
    seed: int = 0
    n_tokens: int = 40_000
    domains: tuple[str, ...] | None = None  # None: the ten default domains (DEFAULT_DOMAINS)
    tokens_per_sequence: int = 24  # the round-size estimate of the collector this reproduces

    def __post_init__(self) -> None:
        from featalign.organisms.tasks import parse_domains

        if self.domains is not None:
            self.domains = tuple(parse_domains(self.domains))
        if self.n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1, got {self.n_tokens}")

    def sequences(self, tokenizer) -> Iterator[list[int]]:
        from featalign.organisms.tasks import DEFAULT_DOMAINS, sample_mixture

        domains = list(self.domains or DEFAULT_DOMAINS)
        rows = 0
        for round_index in itertools.count():
            n_problems = max(64, (self.n_tokens - rows) // self.tokens_per_sequence + 64)
            for problem in sample_mixture(domains, n_problems, self.split, self.seed * 1000 + round_index):
                ids = encode_problem(tokenizer, problem)
                rows += len(ids) - 1
                yield ids

    def fingerprint(self) -> str:
        return "mixture:" + _hash(self.__dict__)


TASK_SET_SPLITS = ("eval", "train", "all")


@dataclass
class TaskSetSource:
    """A task set's problems as text (`<bos> prompt answer <eos>`, see `encode_problem`), tasks interleaved.

    `split`: each task's eval problems, its train problems, or both (train first). With `repeat` the
    problems cycle, so a small task set still fills `n_tokens` rows (repeated tokens, not new ones);
    the fingerprint covers every problem, so a store resumes only on the same set.
    """

    tasks: TaskSet
    split: str = "eval"
    repeat: bool = True

    def __post_init__(self) -> None:
        if self.split not in TASK_SET_SPLITS:
            raise ValueError(f"split must be one of {TASK_SET_SPLITS}, got {self.split!r}")
        if not any(self._task_problems(t) for t in self.tasks):
            raise ValueError(f"the task set has no {self.split} problems to read activations on")

    def _task_problems(self, task) -> list[Problem]:
        if self.split == "eval":
            return list(task.problems)
        if self.split == "train":
            return list(task.train_problems)
        return list(task.train_problems) + list(task.problems)

    def problems(self) -> list[Problem]:
        """One pass over the set: the first problem of every task, then the second, ..."""
        per_task = [self._task_problems(t) for t in self.tasks]
        return [p for group in itertools.zip_longest(*per_task) for p in group if p is not None]

    def sequences(self, tokenizer) -> Iterator[list[int]]:
        problems = self.problems()
        for _ in itertools.count() if self.repeat else range(1):
            for problem in problems:
                yield encode_problem(tokenizer, problem)

    def fingerprint(self) -> str:
        rows = [(p.domain, p.prompt, p.answer) for p in self.problems()]
        return "taskset:" + _hash({"split": self.split, "repeat": self.repeat, "problems": rows})


@dataclass
class TextSource:
    """A list of strings, each one sequence (tokenized with the group's tokenizer)."""

    texts: Sequence[str]

    def __post_init__(self) -> None:
        if not self.texts:
            raise ValueError("TextSource needs at least one text (the file or list given is empty)")

    def sequences(self, tokenizer) -> Iterator[list[int]]:
        for t in self.texts:
            yield _encode(tokenizer, t)

    def fingerprint(self) -> str:
        return "text:" + _hash(list(self.texts))


class TensorSource:
    """Pre-tokenized ids `[N, T]` (with `pad_id` or an attention mask marking padding) or a list of 1-D tensors."""

    def __init__(
        self, tokens: Tensor | Sequence[Tensor], attention_mask: Tensor | None = None, pad_id: int | None = None
    ):
        if isinstance(tokens, Tensor):
            if tokens.ndim != 2:
                raise ValueError(f"pre-tokenized input must be [N, T], got shape {list(tokens.shape)}")
            if attention_mask is None:
                attention_mask = tokens.ne(pad_id) if pad_id is not None else torch.ones_like(tokens, dtype=torch.bool)
            self._seqs = [row[m.bool()].tolist() for row, m in zip(tokens, attention_mask)]
        else:
            self._seqs = [torch.as_tensor(t).flatten().tolist() for t in tokens]

    def sequences(self, tokenizer) -> Iterator[list[int]]:
        yield from (list(s) for s in self._seqs)

    def fingerprint(self) -> str:
        return "tensor:" + _hash(self._seqs)


@dataclass
class DatasetSource:
    """A `datasets.Dataset`: a text column (tokenized here) or a column of token ids."""

    dataset: Any
    column: str = "text"

    def __post_init__(self) -> None:
        if self.column not in self.dataset.column_names:
            raise KeyError(f"dataset has no column {self.column!r}; columns are {self.dataset.column_names}")

    def sequences(self, tokenizer) -> Iterator[list[int]]:
        for row in self.dataset:
            v = row[self.column]
            yield _encode(tokenizer, v) if isinstance(v, str) else list(v)

    def fingerprint(self) -> str:
        fp = getattr(self.dataset, "_fingerprint", None) or _hash(self.dataset[:3])
        return f"dataset:{fp}:{self.column}:{len(self.dataset)}"


def as_source(x: Any) -> TokenSource:
    """Wrap strings, tensors and datasets; pass sources through; None -> the task suite."""
    if x is None:
        return TaskSuiteSource()
    if isinstance(x, TokenSource):
        return x
    if isinstance(x, Tensor):
        return TensorSource(x)
    if isinstance(x, (list, tuple)) and x and all(isinstance(t, str) for t in x):
        return TextSource(list(x))
    if isinstance(x, (list, tuple)) and x and all(isinstance(t, Tensor) for t in x):
        return TensorSource(list(x))
    if hasattr(x, "column_names") and hasattr(x, "__getitem__"):
        return DatasetSource(x)
    raise TypeError(
        f"cannot use {type(x).__name__} as a token source; pass a list of strings, a [N, T] tensor, "
        "a datasets.Dataset, or a TaskSuiteSource/TextSource/TensorSource/DatasetSource"
    )
