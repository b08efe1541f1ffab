import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from featalign.evaluation import (
    cmh_odds_ratio,
    eval_problems,
    evaluate,
    family_cmh,
    in_out_domain_cmh,
    mcnemar_paired,
    plot_accuracy_bars,
    plot_transfer_heatmap,
    score_problems,
    transfer_matrix,
)
from featalign.organisms.model import load_organism
from featalign.organisms.tasks import Problem, get_domain
from tests.analysis.helpers import mh_odds_ratio


def _slow_greedy_correct(model, tok, problem, max_new=10) -> bool:
    """Reference: one example at a time, full forward on the growing sequence, no KV cache."""
    ids = tok(problem.prompt)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                text = tok.decode(out, skip_special_tokens=True)
                return get_domain(problem.domain).verify(text, problem.answer)
            out.append(nxt)
            if len(out) > len(problem.answer) + 1:
                return False
    return False


@pytest.mark.parametrize("kind", ["base", "rl"])
def test_batched_accuracy_matches_slow_loop(tiny_organisms, kind):
    model, tok = load_organism(tiny_organisms.model_dir(kind))
    for domain in ("add", "count", "bool", "lookup"):
        probs = eval_problems(domain, 40)
        fast = score_problems(model, tok, probs, batch_size=16)
        slow = np.array([_slow_greedy_correct(model, tok, p) for p in probs])
        assert (fast == slow).all(), domain


def test_evaluate_returns_per_sample_bools(tiny_organisms):
    model, tok = load_organism(tiny_organisms.base_dir)
    res = evaluate(model, tok, ["add", "max"], 10)
    assert set(res) == {"add", "max"} and all(r.dtype == bool and r.shape == (10,) for r in res.values())


def test_mcnemar_matches_binomial_reference():
    rng = np.random.default_rng(0)
    base = rng.random(200) < 0.4
    tuned = np.where(rng.random(200) < 0.3, ~base, base)
    t = mcnemar_paired(base, tuned)
    b = int((~base & tuned).sum())
    c = int((base & ~tuned).sum())
    assert (t.base_fail_tuned_ok, t.base_ok_tuned_fail) == (b, c)
    assert t.p_value == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_cmh_matches_hand_formula():
    rng = np.random.default_rng(1)
    strata = []
    for p_base, p_tuned, n in [(0.3, 0.5, 120), (0.6, 0.7, 80), (0.2, 0.2, 150)]:
        strata.append((rng.random(n) < p_base, rng.random(n) < p_tuned))
    num = den = 0.0
    for base, tuned in strata:
        a, b = tuned.sum(), (~tuned).sum()  # tuned correct / incorrect
        c, d = base.sum(), (~base).sum()
        n = len(base) + len(tuned)
        num += a * d / n
        den += b * c / n
    r = cmh_odds_ratio(strata)
    assert r.odds_ratio == pytest.approx(num / den, rel=1e-9)
    assert r.ci_low < r.odds_ratio < r.ci_high
    assert r.mean_delta_points == pytest.approx(np.mean([t.mean() - b.mean() for b, t in strata]) * 100)
    # the CMH statistic (no continuity correction) by hand, and its p-value without underflow
    a_s = [(t.sum(), len(t), b.sum(), len(b)) for b, t in strata]
    num = sum(a - n1 * (a + c) / (n1 + n0) for a, n1, c, n0 in a_s)
    var = sum(n1 * n0 * (a + c) * (n1 + n0 - a - c) / ((n1 + n0) ** 2 * (n1 + n0 - 1)) for a, n1, c, n0 in a_s)
    from scipy.stats import chi2

    assert r.p_value == pytest.approx(chi2.sf(num**2 / var, 1), rel=1e-6)
    big = cmh_odds_ratio([(np.arange(1000) < 404, np.arange(1000) < 593)])
    assert 0 < big.p_value < 1e-15  # statsmodels alone would report exactly 0
    assert not r.zero_shifted and not big.zero_shifted  # a defined estimate is the plain one


def test_cmh_with_the_base_at_zero_everywhere_uses_the_zero_shifted_tables():
    """Base 0% on every stratum: the plain MH estimate is a/0; the shifted one is the hand formula on the tables
    with 0.5 added to every cell, with a finite interval above 1, and the p-value is the plain CMH test's."""
    strata = [(np.zeros(200, bool), np.arange(200) < 90), (np.zeros(150, bool), np.arange(150) < 40)]
    num = den = 0.0
    for base, tuned in strata:
        a, b = tuned.sum() + 0.5, (~tuned).sum() + 0.5
        c, d = base.sum() + 0.5, (~base).sum() + 0.5
        n = a + b + c + d
        num += a * d / n
        den += b * c / n
    r = cmh_odds_ratio(strata)
    assert r.zero_shifted
    assert r.odds_ratio == pytest.approx(num / den, rel=1e-9)
    assert 1 < r.ci_low < r.odds_ratio < r.ci_high < np.inf
    a_s = [(t.sum(), len(t), b.sum(), len(b)) for b, t in strata]
    num = sum(a - n1 * (a + c) / (n1 + n0) for a, n1, c, n0 in a_s)
    var = sum(n1 * n0 * (a + c) * (n1 + n0 - a - c) / ((n1 + n0) ** 2 * (n1 + n0 - 1)) for a, n1, c, n0 in a_s)
    from scipy.stats import chi2

    assert r.p_value == pytest.approx(chi2.sf(num**2 / var, 1), rel=1e-6)


def test_transfer_matrix_and_in_out_split():
    base = {"a": np.array([1, 0, 0, 0], bool), "b": np.array([1, 1, 0, 0], bool)}
    tuned = {
        "a": {"a": np.array([1, 1, 1, 0], bool), "b": np.array([1, 0, 0, 0], bool)},
        "b": {"a": np.array([1, 0, 0, 0], bool), "b": np.array([1, 1, 1, 1], bool)},
    }
    m = transfer_matrix(base, tuned, ["a", "b"])
    assert np.allclose(m, [[50, -25], [0, 50]])
    cmh = in_out_domain_cmh(base, tuned)
    assert cmh["in_domain"].n_strata == 2 and cmh["out_of_domain"].n_strata == 2
    assert cmh["in_domain"].mean_delta_points == pytest.approx(50)
    # (train, results) pairs: two tuned models may share a training domain, and pool as two in-domain strata
    shared = in_out_domain_cmh(base, [("a", tuned["a"]), ("a", tuned["a"])])
    assert shared["in_domain"].n_strata == shared["out_of_domain"].n_strata == 2
    assert shared["in_domain"].mean_delta_points == pytest.approx(50)
    # a model trained on several domains: each is in-domain, nothing is left out of domain
    several = in_out_domain_cmh(base, {("a", "b"): tuned["a"]})
    assert several["in_domain"].n_strata == 2 and "out_of_domain" not in several
    assert several["in_domain"].mean_delta_points == pytest.approx((50 - 25) / 2)




def test_family_cmh_pools_same_family_and_other_families_apart():
    rng = np.random.default_rng(4)
    family_of = {"c1": "count", "c2": "count", "c3": "count", "s1": "sort", "s2": "sort"}
    base = {d: rng.random(200) < 0.4 for d in family_of}
    # planted: the model trained on c1 gains on its family (c2, c3) and loses a little on the other one
    p_tuned = {"c1": 0.9, "c2": 0.7, "c3": 0.6, "s1": 0.35, "s2": 0.3}
    tuned = {"c1": {d: rng.random(200) < p for d, p in p_tuned.items()}}
    out = family_cmh(base, tuned, family_of)
    same = [(base[d], tuned["c1"][d]) for d in ("c2", "c3")]
    other = [(base[d], tuned["c1"][d]) for d in ("s1", "s2")]
    assert out["same_family"].n_strata == 2 and out["other_families"].n_strata == 2
    assert out["same_family"].odds_ratio == pytest.approx(mh_odds_ratio(same), rel=1e-9)
    assert out["other_families"].odds_ratio == pytest.approx(mh_odds_ratio(other), rel=1e-9)
    assert out["same_family"].ci_low > 1  # the planted gain is found
    # a family of one: nothing shares it, so the scope is left out rather than pooled empty
    lone = family_cmh(base, {"s1": tuned["c1"]}, {**family_of, "s1": "lone"})
    assert set(lone) == {"other_families"} and lone["other_families"].n_strata == 4


def test_sloppy_stop_share_counts_right_answer_plus_suffix_only():
    from featalign.evaluation import Completion, judge, sloppy_stop_share
    from featalign.tasks import organisms_task

    problems = [Problem("countd", f"cd 1:{'1' * k}=", str(k)) for k in (3, 3, 4, 12, 5)]
    texts = ["3.", "3", "4..", " 12. ", "51."]  # by hand: 3. and 12. are sloppy stops; 4.. and 51. are not
    task = organisms_task("countd", problems)
    completions = [Completion(t, True) for t in texts]
    assert sloppy_stop_share(task, completions) == pytest.approx(2 / 5)
    assert judge(task, completions).tolist() == [False, True, False, False, False]
    # a completion that never ended is wrong even when its text is the answer (organisms require <eos>)
    assert judge(task, [Completion("3", False)] + completions[1:]).tolist()[0] is False


def test_figures_are_written(tmp_path):
    p1 = plot_accuracy_bars({"base": {"a": 0.2, "b": 0.5}, "rl": {"a": 0.4, "b": 0.5}}, tmp_path / "bars.png")
    p2 = plot_transfer_heatmap(np.array([[10.0, -5.0]]), ["a"], ["a", "b"], tmp_path / "heat.png")
    for p in (p1, p2):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000


def test_bridge_and_hf_model_score_identically(tiny_organisms):
    from transformer_lens.model_bridge import TransformerBridge

    d = tiny_organisms.model_dir("rl")
    hf, tok = load_organism(d)
    bridge = TransformerBridge.boot_transformers(str(d), device="cpu")
    probs = eval_problems("sub", 30) + eval_problems("compare", 30)
    assert (score_problems(bridge, tok, probs) == score_problems(hf, tok, probs)).all()
