"""Token sources: deterministic streams of token-id sequences, the same for every model.

A source yields one `list[int]` per sequence (BOS included, as the models expect it) and has a
`fingerprint()` that the store records, so a resumed run can prove it continues the same stream.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor


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

    domains: tuple[str, ...] | None = None  # None: every domain
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
        from featalign.organisms.tasks import DOMAINS, sample_problems

        domains = list(self.domains or DOMAINS)
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

    def __init__(self, tokens: Tensor | Sequence[Tensor], attention_mask: Tensor | None = None, pad_id: int | None = None):
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
