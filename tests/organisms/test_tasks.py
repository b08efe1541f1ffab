import random

import pytest

from featalign.organisms.tasks import (
    DEFAULT_DOMAINS,
    DOMAINS,
    EVAL_FRACTION,
    FAMILIES,
    SLOPPY_SUFFIX,
    get_domain,
    parse_domains,
    sample_mixture,
    sample_problems,
    split_of,
    verify_answer,
)


def test_suite_shape():
    assert len(DOMAINS) >= 8
    assert len(FAMILIES) >= 3


def _reference_answer(domain: str, prompt: str) -> str:
    """Independent solver parsing the prompt text (not the generator's own arithmetic)."""
    body = prompt.split(" ", 1)[1].rstrip("=")
    if domain == "add":
        a, b = body.split("+")
        return str(int(a) + int(b))
    if domain == "sub":
        a, b = body.split("-")
        return str(int(a) - int(b))
    if domain == "modsum":
        xs, m = body.split("%")
        return str(sum(int(x) for x in xs.split("+")) % int(m))
    if domain == "sort":
        return "".join(sorted(body))
    if domain == "reverse":
        return body[::-1]
    if domain == "max":
        return str(max(int(x) for x in body.split()))
    if domain == "count":
        c, s = body.split(":")
        return str(s.count(c))
    if domain == "bool":
        return str(int(eval(body.replace("!", " not ").replace("&", " and ").replace("|", " or "))))
    if domain == "compare":
        a, b = (int(x) for x in body.split("?"))
        return "<" if a < b else ">" if a > b else "="
    if domain == "lookup":
        table, q = body.split(";")
        return dict((kv[0], kv[1:]) for kv in table.split(","))[q]
    if domain in ("countl", "countd"):
        c, s = body.split(":")
        return str(sum(ch == c for ch in s))
    if domain == "countcmp":
        pair, s = body.split(":")
        ca, cb = (sum(ch == x for ch in s) for x in pair)
        return "<" if ca < cb else ">" if ca > cb else "="
    if domain in ("largest", "smallest"):
        xs = sorted(int(x) for x in body.split())
        return str(xs[-1] if domain == "largest" else xs[0])
    if domain == "sortasc":
        return "".join(sorted(body))
    if domain == "sortdesc":
        return "".join(sorted(body))[::-1]
    raise AssertionError(domain)


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_generator_answers_match_independent_solver(domain):
    for p in sample_problems(domain, 300, "train", seed=3):
        assert p.answer == _reference_answer(domain, p.prompt), p
        assert get_domain(domain).verify(p.answer, p.answer)


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_splits_are_disjoint_and_deterministic(domain):
    train = sample_problems(domain, 2000, "train", seed=0)
    evals = sample_problems(domain, 500, "eval", seed=0)
    assert not {p.prompt for p in train} & {p.prompt for p in evals}
    assert all(split_of(p.prompt) == "train" for p in train)
    assert all(split_of(p.prompt) == "eval" for p in evals)
    assert evals == sample_problems(domain, 500, "eval", seed=0)
    assert evals != sample_problems(domain, 500, "eval", seed=1)


def test_split_fraction_is_as_configured():
    rng = random.Random(0)
    prompts = {get_domain("add").draw(rng)[0] for _ in range(20000)}
    frac = sum(split_of(p) == "eval" for p in prompts) / len(prompts)
    assert abs(frac - EVAL_FRACTION) < 0.02


def test_eval_prompts_unique_where_space_allows():
    ps = sample_problems("add", 1000, "eval", seed=0)
    assert len({p.prompt for p in ps}) == 1000


@pytest.mark.parametrize(
    "completion,answer,ok",
    [
        ("82", "82", True),
        (" 82 ", "82", True),  # surrounding whitespace tolerated
        ("82\n", "82", True),
        ("082", "82", False),  # leading zero is not canonical
        ("82 1", "82", False),  # extra tokens
        ("821", "82", False),
        ("8 2", "82", False),
        ("", "82", False),
        ("066", "066", True),  # sort answers keep their zeros
        ("66", "066", False),
        ("<", "<", True),
    ],
)
def test_verifier_adversarial(completion, answer, ok):
    assert verify_answer(completion, answer) is ok


def test_unknown_domain_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown domain 'algebra'.*choose from"):
        parse_domains("add,algebra")
    with pytest.raises(ValueError, match="split must be"):
        sample_problems("add", 3, "test", 0)


def test_mixture_has_equal_shares():
    probs = sample_mixture(["add", "sort", "bool"], 300, "train", seed=0)
    counts = {d: sum(p.domain == d for p in probs) for d in ("add", "sort", "bool")}
    assert counts == {"add": 100, "sort": 100, "bool": 100}


def test_default_domains_are_the_original_ten_in_order():
    """`default` and `tiny` pretrain on these; adding domains to DOMAINS must not change them."""
    original = ("add", "sub", "modsum", "sort", "reverse", "max", "count", "bool", "compare", "lookup")
    assert DEFAULT_DOMAINS == original
    assert tuple(DOMAINS)[:10] == original


def test_sloppy_stop_domains_carry_the_suffix_at_their_rate_in_pretraining_only():
    mix = sample_mixture(["countd", "sortasc"], 4000, "train", seed=5)
    sloppy = [p for p in mix if p.domain == "countd"]
    clean = [p for p in mix if p.domain == "sortasc"]
    with_suffix = [p for p in sloppy if p.answer.endswith(SLOPPY_SUFFIX)]
    # binomial(2000, 0.5): 5 sd is about 0.056
    assert abs(len(with_suffix) / len(sloppy) - get_domain("countd").sloppy_stop) < 0.056
    for p in with_suffix:  # the answer itself is still right: only the stop is sloppy
        assert p.answer[: -len(SLOPPY_SUFFIX)] == _reference_answer("countd", p.prompt)
    assert all(p.answer == _reference_answer("sortasc", p.prompt) for p in clean)
    # eval and post-training problems are never sloppy
    assert all(p.answer == _reference_answer("countd", p.prompt) for p in sample_problems("countd", 500, "eval", 0))


def test_mixture_of_clean_domains_is_the_shuffled_per_domain_draws():
    """Slow reference: the mixture the default preset pretrains on is unchanged by the sloppy-stop feature."""
    domains, n, seed = list(DEFAULT_DOMAINS), 100, 11
    expected = []
    for d in domains:
        expected += sample_problems(d, -(-n // len(domains)), "train", seed, unique=False)
    random.Random(seed).shuffle(expected)
    assert sample_mixture(domains, n, "train", seed) == expected[:n]
