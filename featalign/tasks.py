"""Task sets: prompts with reference answers, a verifier and generation settings, from any source.

Every stage that scores a model (evaluation, transfer matrices, success features, interventions)
takes a `TaskSet`, so a user's GSM8K-style JSONL file, a `datasets.Dataset` or the organisms'
synthetic domains all go through one path. The organisms are one built-in task set
(`TaskSet.organisms()`); nothing downstream knows which kind it got.

Verifiers are looked up by name (`VERIFIERS`) or given as a callable `(completion, reference) -> bool`:
- `exact`: equal after stripping surrounding whitespace (the organisms' rule);
- `numeric`: the last number of the completion equals the reference within a tolerance;
- `final_answer`: the text after the last marker (GSM8K's `####`) equals the reference's final answer,
  numerically where both parse as numbers;
- `multiple_choice`: the chosen option letter equals the reference letter (or option index).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from featalign.config import JsonConfig
from featalign.organisms.tasks import DEFAULT_DOMAINS, Problem, get_domain, parse_domains, sample_problems

Verifier = Callable[[str, str], bool]
ORGANISMS_EVAL_SEED = 1234  # the organisms' eval-split seed: every model is scored on the same prompts

__all__ = [
    "GenerationSettings",
    "Problem",
    "Task",
    "TaskSet",
    "VERIFIERS",
    "Verifier",
    "make_verifier",
    "organisms_task",
    "parse_number",
    "final_answer",
]

_NUMBER_RE = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")


def parse_number(text: str) -> float | None:
    """The last number in `text` (commas, a leading `$` and a trailing `%` tolerated), else None."""
    found = _NUMBER_RE.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", "").replace("$", ""))
    except ValueError:
        return None


def final_answer(text: str, marker: str = "####") -> str:
    """The text after the last `marker`, stripped (the whole text when there is no marker)."""
    return text.rsplit(marker, 1)[-1].strip() if marker in text else text.strip()


def verify_exact(completion: str, reference: str) -> bool:
    """Equal after stripping surrounding whitespace: extra tokens and non-canonical forms fail."""
    return completion.strip() == reference.strip()


def make_numeric(rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> Verifier:
    """The last number of the completion equals the reference's (last) number within the tolerances."""

    def verify_numeric(completion: str, reference: str) -> bool:
        got, want = parse_number(completion), parse_number(reference)
        return got is not None and want is not None and math.isclose(got, want, rel_tol=rel_tol, abs_tol=abs_tol)

    return verify_numeric


def make_final_answer(marker: str = "####", rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> Verifier:
    """GSM8K-style: compare what follows the last `marker` in the completion with the reference's final
    answer (the reference may carry a worked solution before its own marker). A completion without
    the marker fails: the format is part of the task."""
    numeric = make_numeric(rel_tol, abs_tol)

    def verify_final_answer(completion: str, reference: str) -> bool:
        if marker not in completion:
            return False
        got, want = final_answer(completion, marker), final_answer(reference, marker)
        if parse_number(want) is not None and _NUMBER_RE.fullmatch(want.replace(" ", "")):
            return numeric(got.split("\n", 1)[0], want)
        return got.split("\n", 1)[0].strip() == want

    return verify_final_answer


_CHOICE_RES = (
    re.compile(r"answer\s*(?:is)?\s*[:=]?\s*\(?([A-Z])\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"^\W*\(?([A-Z])\)?(?![A-Za-z])"),
)


def make_multiple_choice(letters: str = "ABCDEFGHIJ") -> Verifier:
    """The option letter the completion names (`B`, `(B)`, `B.`, `The answer is B`) equals the reference,
    given as a letter or a 0-based option index."""

    def chosen(completion: str) -> str | None:
        for pattern in _CHOICE_RES:
            m = pattern.search(completion.strip())
            if m and m.group(1).upper() in letters:
                return m.group(1).upper()
        return None

    def verify_multiple_choice(completion: str, reference: str) -> bool:
        ref = reference.strip()
        ref = letters[int(ref)] if ref.isdigit() else ref.strip("() .").upper()
        return chosen(completion) == ref

    return verify_multiple_choice


VERIFIERS: dict[str, Callable[..., Verifier]] = {
    "exact": lambda: verify_exact,
    "numeric": make_numeric,
    "final_answer": make_final_answer,
    "multiple_choice": make_multiple_choice,
}


def make_verifier(spec: str | Verifier, **options: Any) -> Verifier:
    """A verifier from its registered name (with options, e.g. `marker='####'`) or a callable as is."""
    if callable(spec):
        return spec
    if spec not in VERIFIERS:
        raise ValueError(f"unknown verifier {spec!r}: use one of {sorted(VERIFIERS)} or pass a callable")
    return VERIFIERS[spec](**options)


@dataclass
class GenerationSettings(JsonConfig):
    """How a task's completions are generated (greedy) before they are verified.

    `max_new_tokens=None` allows the longest reference answer plus two tokens, right for short exact
    answers (the organisms); free-form reasoning tasks need an explicit budget. A completion ends at
    the tokenizer's eos or at the first of `stop_strings`; with `require_eos`, one that ran out of
    budget without either counts as wrong (the organisms must stop by themselves).
    """

    max_new_tokens: int | None = None
    stop_strings: tuple[str, ...] = ()
    chat_template: bool = False  # wrap the prompt as one user turn with the tokenizer's chat template
    require_eos: bool = False
    batch_size: int = 64

    def __post_init__(self) -> None:
        self.stop_strings = tuple(self.stop_strings)
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (or None), got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Task:
    """One task of a set: its eval problems (and optional train problems), verifier and generation settings."""

    name: str
    problems: list[Problem]
    verifier: Verifier = verify_exact
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    family: str | None = None  # tasks that share structure (transfer is expected within a family)
    train_problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.problems:
            raise ValueError(f"task {self.name!r} has no problems")

    def verify(self, completion: str, reference: str) -> bool:
        return bool(self.verifier(completion, reference))

    def __len__(self) -> int:
        return len(self.problems)

    def head(self, n: int | None) -> Task:
        """The same task on its first `n` problems (all when None)."""
        if n is None or n >= len(self.problems):
            return self
        return Task(self.name, self.problems[:n], self.verifier, self.generation, self.family, self.train_problems)


def organisms_task(domain: str, problems: list[Problem], train_problems: list[Problem] | None = None) -> Task:
    """An organisms domain as a task: its exact verifier; answers are short and must end with `<eos>`."""
    d = get_domain(domain)
    gen = GenerationSettings(max_new_tokens=None, require_eos=True, batch_size=500)
    return Task(domain, problems, d.verify, gen, family=d.family, train_problems=list(train_problems or []))


@dataclass
class TaskSet:
    """Named tasks, scored the same way whatever their source."""

    tasks: dict[str, Task]

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("a task set needs at least one task")

    def __getitem__(self, name: str) -> Task:
        if name not in self.tasks:
            raise KeyError(f"no task {name!r} in this task set; it has {sorted(self.tasks)}")
        return self.tasks[name]

    def __iter__(self):
        return iter(self.tasks.values())

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def names(self) -> list[str]:
        return list(self.tasks)

    def subset(self, names: Sequence[str]) -> TaskSet:
        return TaskSet({n: self[n] for n in names})

    def head(self, n: int | None) -> TaskSet:
        """Every task on its first `n` problems."""
        return TaskSet({k: t.head(n) for k, t in self.tasks.items()})

    def problems(self) -> dict[str, list[Problem]]:
        return {k: t.problems for k, t in self.tasks.items()}

    # --- sources --------------------------------------------------------------------------------

    @classmethod
    def organisms(
        cls,
        domains: Sequence[str] | str | None = None,
        n_per_task: int = 1000,
        seed: int | None = None,
        n_train: int = 0,
    ) -> TaskSet:
        """The organisms' synthetic domains (the ten of DEFAULT_DOMAINS unless named) on their fixed eval split."""
        names = parse_domains(domains) if domains is not None else list(DEFAULT_DOMAINS)
        eval_seed = ORGANISMS_EVAL_SEED if seed is None else seed
        return cls(
            {
                d: organisms_task(
                    d,
                    sample_problems(d, n_per_task, "eval", eval_seed),
                    sample_problems(d, n_train, "train", eval_seed) if n_train else [],
                )
                for d in names
            }
        )

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        *,
        name: str = "task",
        prompt_key: str = "prompt",
        answer_key: str = "answer",
        task_key: str | None = "task",
        split_key: str | None = "split",
        verifier: str | Verifier = "exact",
        verifier_options: Mapping[str, Any] | None = None,
        generation: GenerationSettings | None = None,
        where: str = "records",
    ) -> TaskSet:
        """Tasks from dict rows: each row's `task_key` names its task (`name` when absent), rows whose
        `split_key` is 'train' become train problems, the rest eval problems."""
        verify = make_verifier(verifier, **dict(verifier_options or {}))
        gen = generation or GenerationSettings()
        evals: dict[str, list[Problem]] = {}
        trains: dict[str, list[Problem]] = {}
        for i, row in enumerate(records):
            for key in (prompt_key, answer_key):
                if key not in row:
                    raise ValueError(
                        f"{where}: row {i} has no {key!r} field (it has {sorted(row)}); "
                        f"name the column with prompt_key=/answer_key= (--prompt-key/--answer-key)"
                    )
            task = str(row.get(task_key, name)) if task_key else name
            bucket = trains if split_key and str(row.get(split_key, "eval")) == "train" else evals
            bucket.setdefault(task, []).append(Problem(task, str(row[prompt_key]), str(row[answer_key])))
        if not evals:
            raise ValueError(f"{where}: no eval problems found (every row is empty or marked split=train)")
        return cls({t: Task(t, probs, verify, gen, train_problems=trains.get(t, [])) for t, probs in evals.items()})

    @classmethod
    def from_jsonl(cls, path: str | Path, **kw: Any) -> TaskSet:
        """Tasks from a JSONL file, one `{"prompt": ..., "answer": ...[, "task": ...]}` object a line;
        the task name defaults to the file's stem."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"task file {path} does not exist: pass a JSONL file of prompt/answer rows")
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{path}:{n}: not a JSON object ({e.msg}); each line must be one JSON object"
                    ) from e
        kw.setdefault("name", path.stem)
        return cls.from_records(rows, where=str(path), **kw)

    @classmethod
    def from_dataset(cls, dataset: Any, *, columns: Mapping[str, str] | None = None, **kw: Any) -> TaskSet:
        """Tasks from a `datasets.Dataset` (or any iterable of dict rows); `columns` maps
        `prompt`/`answer`/`task` to the dataset's column names, e.g. `{"prompt": "question"}`."""
        cols = dict(columns or {})
        for key in cols:
            if key not in ("prompt", "answer", "task", "split"):
                raise ValueError(f"columns: unknown key {key!r}; map 'prompt', 'answer', 'task' or 'split'")
        return cls.from_records(
            dataset,
            prompt_key=cols.get("prompt", "prompt"),
            answer_key=cols.get("answer", "answer"),
            task_key=cols.get("task", "task"),
            split_key=cols.get("split", "split"),
            where="dataset",
            **kw,
        )

    @classmethod
    def load(cls, spec: str, n_per_task: int | None = None, **kw: Any) -> TaskSet:
        """From a CLI string: `organisms`, `organisms:add,sub`, a `.jsonl` path, or a task-set file
        (`.yaml`/`.json`) that names the JSONL with its verifier and generation settings:

            path: gsm8k.jsonl              # relative to the task-set file
            verifier: final_answer         # exact | numeric | final_answer | multiple_choice
            verifier_options: {marker: "####"}
            generation: {max_new_tokens: 256, stop_strings: ["\n\n"], chat_template: false}

        `kw` (e.g. `verifier=` from a CLI flag) overrides the file's fields."""
        if spec == "organisms" or spec.startswith("organisms:"):
            domains = spec.split(":", 1)[1] if ":" in spec else None
            return cls.organisms(domains, n_per_task or 1000)
        if Path(spec).suffix in (".yaml", ".yml", ".json"):
            return cls.from_spec_file(spec, **kw).head(n_per_task)
        return cls.from_jsonl(spec, **kw).head(n_per_task)

    @classmethod
    def from_spec_file(cls, path: str | Path, **kw: Any) -> TaskSet:
        """A task-set file (see `load`): the one place a CLI user sets a verifier and generation settings."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"task-set file {path} does not exist")
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        known = {
            "path",
            "verifier",
            "verifier_options",
            "generation",
            "name",
            "prompt_key",
            "answer_key",
            "task_key",
            "split_key",
        }
        if not isinstance(data, dict) or "path" not in data:
            raise ValueError(
                f"{path}: a task-set file is a mapping with a 'path' to a JSONL file (and optional "
                f"{', '.join(sorted(known - {'path'}))})"
            )
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        opts = {k: v for k, v in data.items() if k != "path"}
        if "generation" in opts:
            opts["generation"] = GenerationSettings.from_dict(opts["generation"])
        return cls.from_jsonl(path.parent / str(data["path"]), **{**opts, **kw})
