"""The organisms' synthetic multi-domain reasoning suite: seeded generators and exact verifiers.

Each domain draws problems of mixed difficulty, so a partially trained model solves the easy
ones and fails the hard ones (room for post-training to help). Train and eval prompts come from
disjoint halves of the prompt space, chosen by a hash of the prompt text (`split_of`), so no
eval prompt can ever appear in training; `tests/organisms/test_tasks.py` checks it.

A completion is the model's text up to (not including) `<eos>`. Verifiers are strict: the answer
must equal the canonical one after stripping surrounding whitespace. Extra tokens fail, and so
do non-canonical numbers such as leading zeros (`"082"` is not `"82"`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

EVAL_FRACTION = 0.2  # share of each domain's prompt space reserved for evaluation
SLOPPY_SUFFIX = "."  # what a sloppy-stop domain's pretraining answers carry after the answer (see Domain.sloppy_stop)
# The counting family's planted rate. Not one half: a base that learns a 50% rate puts even odds on '.' and on
# ending, so whether greedy decoding shows the deficiency was a near tie that the organism seed tipped (it showed
# in 2 of 4 builds at 0.5, docs/organisms.md); at 0.65 '.' is the greedy choice after most right answers.
SLOPPY_STOP_RATE = 0.65


@dataclass(frozen=True)
class Problem:
    """One task instance: the prompt the model continues and the canonical answer the verifier compares with."""

    domain: str
    prompt: str  # without <bos>; the model continues right after it
    answer: str  # canonical answer, without <eos>


@dataclass(frozen=True)
class Domain:
    """A task domain: a seeded generator of (prompt, answer) pairs of mixed difficulty and an exact verifier."""

    name: str
    family: str
    description: str
    draw: Callable[[random.Random], tuple[str, str]]
    numeric: bool = False  # answers are integers: leading zeros are not canonical
    # Share of this domain's *pretraining* examples whose answer is followed by SLOPPY_SUFFIX before <eos>: a stop
    # rule the base learns as a rate (its greedy decoding mostly keeps the '.'; sampling ends right at about
    # 1 - rate), which the verifier rejects and post-training can fix. A deficiency planted on purpose
    # (docs/organisms.md, "structured").
    sloppy_stop: float = 0.0

    def verify(self, completion: str, answer: str) -> bool:
        return verify_answer(completion, answer)


def verify_answer(completion: str, answer: str) -> bool:
    """Exact match after stripping surrounding whitespace (leading zeros and extra tokens fail)."""
    return completion.strip() == answer


def split_of(prompt: str) -> str:
    """'eval' or 'train', fixed by a hash of the prompt text alone."""
    h = int.from_bytes(hashlib.sha1(prompt.encode()).digest()[:8], "big") / 2**64
    return "eval" if h < EVAL_FRACTION else "train"


# --- generators --------------------------------------------------------------------------------


def _num(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _add(rng: random.Random) -> tuple[str, str]:
    da, db = rng.choice((1, 2, 2, 3)), rng.choice((1, 2, 2, 3))
    a, b = _num(rng, da), _num(rng, db)
    return f"add {a}+{b}=", str(a + b)


def _sub(rng: random.Random) -> tuple[str, str]:
    a, b = _num(rng, rng.randint(1, 3)), _num(rng, rng.randint(1, 3))
    a, b = max(a, b), min(a, b)
    return f"sub {a}-{b}=", str(a - b)


def _modsum(rng: random.Random) -> tuple[str, str]:
    xs = [rng.randint(0, 9) for _ in range(rng.randint(2, 4))]
    m = rng.randint(2, 9)
    return f"mod {'+'.join(map(str, xs))}%{m}=", str(sum(xs) % m)


def _sort(rng: random.Random) -> tuple[str, str]:
    s = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 9)))
    return f"sort {s}=", "".join(sorted(s))


def _rev(rng: random.Random) -> tuple[str, str]:
    s = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 12)))
    return f"rev {s}=", s[::-1]


def _max(rng: random.Random) -> tuple[str, str]:
    xs = [_num(rng, rng.randint(1, 3)) for _ in range(rng.randint(3, 7))]
    return f"max {' '.join(map(str, xs))}=", str(max(xs))


def _count(rng: random.Random) -> tuple[str, str]:
    alphabet = "abcd"
    s = "".join(rng.choice(alphabet) for _ in range(rng.randint(4, 10)))
    c = rng.choice(alphabet)
    return f"cnt {c}:{s}=", str(s.count(c))


def _bool_expr(rng: random.Random, depth: int) -> tuple[str, int]:
    if depth == 0:
        v = rng.randint(0, 1)
        return str(v), v
    op = rng.choice("&|!")
    if op == "!":
        e, v = _bool_expr(rng, depth - 1)
        return f"!{e}", 1 - v
    (lhs, lv), (rhs, rv) = _bool_expr(rng, depth - 1), _bool_expr(rng, rng.randint(0, depth - 1))
    v = (lv & rv) if op == "&" else (lv | rv)
    return f"({lhs}{op}{rhs})", v


def _bool(rng: random.Random) -> tuple[str, str]:
    e, v = _bool_expr(rng, rng.randint(1, 4))
    if e.startswith("(") and e.endswith(")") and e.count("(") == 1:
        e = e[1:-1]
    return f"bool {e}=", str(v)


def _cmp(rng: random.Random) -> tuple[str, str]:
    a = _num(rng, rng.randint(2, 4))
    u = rng.random()
    # near misses (same length, small gap) make the comparison hinge on low-order digits
    b = a if u < 0.15 else max(0, a + rng.randint(-9, 9)) if u < 0.55 else _num(rng, len(str(a)))
    return f"cmp {a}?{b}=", "<" if a < b else (">" if a > b else "=")


def _lookup(rng: random.Random) -> tuple[str, str]:
    keys = rng.sample("abcdefghijklmnopqrstuvwxyz", rng.randint(2, 6))
    vals = [str(rng.randint(0, 9)) for _ in keys]
    q = rng.randrange(len(keys))
    ctx = ",".join(f"{k}{v}" for k, v in zip(keys, vals))
    return f"key {ctx};{keys[q]}=", vals[q]


# structured suite: domains that share a computation on purpose (the family names it), see docs/organisms.md


def _letters(rng: random.Random, alphabet: str, lo: int, hi: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _count_letters(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng, "abcdef", 4, 12)
    c = rng.choice("abcdef")
    return f"cl {c}:{s}=", str(s.count(c))


def _count_digits(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng, "012345", 4, 12)
    c = rng.choice("012345")
    return f"cd {c}:{s}=", str(s.count(c))


def _count_compare(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng, "abcdef", 4, 12)
    a, b = rng.sample("abcdef", 2)
    ca, cb = s.count(a), s.count(b)
    return f"cc {a}{b}:{s}=", "<" if ca < cb else (">" if ca > cb else "=")


def _numbers(rng: random.Random) -> list[int]:
    return [_num(rng, rng.randint(1, 3)) for _ in range(rng.randint(3, 6))]


def _largest(rng: random.Random) -> tuple[str, str]:
    xs = _numbers(rng)
    return f"hi {' '.join(map(str, xs))}=", str(max(xs))


def _smallest(rng: random.Random) -> tuple[str, str]:
    xs = _numbers(rng)
    return f"lo {' '.join(map(str, xs))}=", str(min(xs))


def _sort_ascending(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng, "abcdefghijklmnop", 5, 12)
    return f"sa {s}=", "".join(sorted(s))


def _sort_descending(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng, "abcdefghijklmnop", 5, 12)
    return f"sd {s}=", "".join(sorted(s, reverse=True))


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in [
        Domain("add", "arithmetic", "sum of two 1-3 digit numbers (mostly 2-digit)", _add, numeric=True),
        Domain("sub", "arithmetic", "difference of two 1-3 digit numbers (non-negative)", _sub, numeric=True),
        Domain("modsum", "arithmetic", "sum of 2-4 digits modulo 2-9", _modsum, numeric=True),
        Domain("sort", "algorithmic", "sort 4-9 digits ascending", _sort),
        Domain("reverse", "algorithmic", "reverse 4-12 letters", _rev),
        Domain("max", "algorithmic", "largest of 3-7 numbers of 1-3 digits", _max, numeric=True),
        Domain("count", "algorithmic", "occurrences of a letter in a 4-10 letter string", _count, numeric=True),
        Domain("bool", "logic", "boolean expression over 0/1 with & | ! (depth 1-4)", _bool),
        Domain("compare", "logic", "order relation of two 2-4 digit numbers: < > =", _cmp),
        Domain("lookup", "knowledge", "key-value recall from an in-context table", _lookup),
        # structured suite (preset `structured`): each family shares one computation; counting also shares a
        # sloppy stop in pretraining (65% of its answers are followed by '.'), the deficiency RL can fix everywhere
        Domain(
            "countl",
            "counting",
            "occurrences of a letter in 4-12 letters a-f (sloppy stop)",
            _count_letters,
            numeric=True,
            sloppy_stop=SLOPPY_STOP_RATE,
        ),
        Domain(
            "countd",
            "counting",
            "occurrences of a digit in 4-12 digits 0-5 (sloppy stop)",
            _count_digits,
            numeric=True,
            sloppy_stop=SLOPPY_STOP_RATE,
        ),
        Domain(
            "countcmp",
            "counting",
            "which of two letters occurs more in 4-12 letters: < > = (sloppy stop)",
            _count_compare,
            sloppy_stop=SLOPPY_STOP_RATE,
        ),
        Domain("largest", "extremum", "largest of 3-6 numbers of 1-3 digits", _largest, numeric=True),
        Domain("smallest", "extremum", "smallest of 3-6 numbers of 1-3 digits", _smallest, numeric=True),
        Domain("sortasc", "sorting", "sort 5-12 letters a-p ascending", _sort_ascending),
        Domain("sortdesc", "sorting", "sort 5-12 letters a-p descending", _sort_descending),
    ]
}
# The original ten, in their order: the `default` and `tiny` presets' pretraining mix and every caller's
# "all domains" default (adding a domain to DOMAINS must not change what those build or read).
DEFAULT_DOMAINS: tuple[str, ...] = (
    "add",
    "sub",
    "modsum",
    "sort",
    "reverse",
    "max",
    "count",
    "bool",
    "compare",
    "lookup",
)
STRUCTURED_DOMAINS: tuple[str, ...] = ("countl", "countd", "countcmp", "largest", "smallest", "sortasc", "sortdesc")
FAMILIES: dict[str, list[str]] = {}
for _d in DOMAINS.values():
    FAMILIES.setdefault(_d.family, []).append(_d.name)


def get_domain(name: str) -> Domain:
    """The `Domain` named `name`; an unknown name is refused with the valid ones."""
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; choose from {sorted(DOMAINS)}")
    return DOMAINS[name]


def parse_domains(spec: str | Sequence[str]) -> list[str]:
    """'add,sub' or ['add', 'sub'] -> validated list (empty entries dropped)."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    for n in names:
        get_domain(n)
    return names


def sample_problems(
    domain: str, n: int, split: str, seed: int, unique: bool = True, max_tries_factor: int = 50
) -> list[Problem]:
    """Draw `n` problems of `domain` from `split` ('train' or 'eval'), deterministically from `seed`.

    With `unique`, prompts do not repeat; if the split's prompt space is too small for that,
    duplicates fill the rest (still from the right split).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    d = get_domain(domain)
    seed_key = int.from_bytes(hashlib.sha1(f"{domain}|{split}|{seed}".encode()).digest()[:8], "big")
    rng = random.Random(seed_key)
    out: list[Problem] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        prompt, answer = d.draw(rng)
        tries += 1
        if split_of(prompt) != split:
            continue
        if unique and prompt in seen and tries < max_tries_factor * n:
            continue
        seen.add(prompt)
        out.append(Problem(domain, prompt, answer))
    return out


def sample_mixture(domains: list[str], n: int, split: str, seed: int) -> list[Problem]:
    """A shuffled mixture with an equal share of each domain (not unique: for pretraining streams).

    This is the pretraining text: a sloppy-stop domain's answers carry SLOPPY_SUFFIX at its `sloppy_stop` rate
    (drawn from their own seeded stream, so domains without one come out exactly as before)."""
    per = -(-n // len(domains))
    probs: list[Problem] = []
    for name in domains:
        drawn = sample_problems(name, per, split, seed, unique=False)
        rate = get_domain(name).sloppy_stop
        if rate > 0:
            rng = random.Random(f"{name}|{split}|{seed}|sloppy")
            drawn = [Problem(p.domain, p.prompt, p.answer + SLOPPY_SUFFIX) if rng.random() < rate else p for p in drawn]
        probs += drawn
    random.Random(seed).shuffle(probs)
    return probs[:n]
