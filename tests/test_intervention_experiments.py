import json

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from featalign.crosscoder.config import CrosscoderConfig
from featalign.crosscoder.model import Crosscoder
from featalign.evaluation import eval_problems, score_problems
from featalign.interventions import (
    InterventionResult, SweepResult, coefficient_sweep, firing_bins, matched_random_features, matching_bins,
    paired_bootstrap_ci, run_intervention,
)
from featalign.interventions import ablate, steer
from featalign.models import hf_model_of
from featalign.models import edit_hooks, load_model

HOOK = "blocks.0.hook_resid_post"
L = 64


def _with_tokenizer(bridge):
    return bridge, bridge.tokenizer


def _crosscoder() -> Crosscoder:
    cc = Crosscoder(CrosscoderConfig(models=("base", "rl"), hooks=(HOOK,), d_model=32, n_latents=L,
                                     variant="l1", dec_init_norm=0.3))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        cc.W_enc.add_(0.1 * torch.randn(cc.W_enc.shape, generator=g))
        cc.b_enc.copy_(0.05 * torch.randn(L, generator=g))
        cc.norm_scale.copy_(torch.tensor([[0.7], [1.6]]))
    return cc


def _freq(seed=0) -> np.ndarray:
    f = np.random.default_rng(seed).random(L) ** 3
    f[:6] = 0.0  # a bin of dead latents
    return f


@pytest.fixture(scope="module")
def rl(tiny_organisms):
    return _with_tokenizer(load_model(tiny_organisms.model_dir("rl")))


@pytest.fixture(scope="module")
def tasks():
    return {"compare": eval_problems("compare", 12), "bool": eval_problems("bool", 12)}


def _steer_factory(coef):
    return lambda ids: steer(ids, coef, torch.ones(len(ids)), decoder="base")


def test_matched_controls_share_bins_exclude_chosen_and_are_deterministic():
    f = _freq()
    bins = firing_bins(f, 5)
    chosen = [1, 10, 20, 30, 40, 50]
    draws = matched_random_features(f, chosen, 25, seed=3, n_bins=5)
    assert len(draws) == 25
    for d in draws:
        assert len(d) == len(chosen) == len(set(d))
        assert not set(d) & set(chosen)
        assert [bins[k] for k in d] == [bins[k] for k in chosen]
    assert draws == matched_random_features(f, chosen, 25, seed=3, n_bins=5)
    assert draws != matched_random_features(f, chosen, 25, seed=4, n_bins=5)
    assert len(set(bins[:6].tolist())) == 1  # tied frequencies (the dead latents) share a bin
    assert len({d for d in draws}) > 1


def test_dead_latents_have_their_own_bin_and_never_match_alive_features():
    f = np.r_[np.zeros(45), np.linspace(0.01, 0.5, 55)]  # dead latents fill several quantiles
    bins = firing_bins(f)
    assert set(bins[:45].tolist()) == {0} and (bins[45:] >= 1).all()
    draws = matched_random_features(f, [45, 60], 50, seed=0)
    assert all(f[k] > 0 for d in draws for k in d)
    # alive bins are quantiles of the alive frequencies: about equal sizes
    sizes = np.bincount(bins[45:])[1:]
    assert sizes.sum() == 55 and sizes.max() - sizes.min() <= 2


def test_size_matched_controls_share_the_size_tercile_within_the_firing_bin():
    # two firing bins of 30 latents each (frequencies 0.1 and 0.2 tied), sizes 1..30 in each: with 3 size bins
    # the cells are the thirds of each firing bin by size, counted by hand
    f = np.r_[np.full(30, 0.1), np.full(30, 0.2)]
    size = np.r_[np.arange(1.0, 31.0), np.arange(1.0, 31.0)]
    cells = matching_bins(f, 2, size, 3)
    third = np.repeat([1, 2, 3], 10)
    assert (cells == np.r_[1 * 4 + third, 2 * 4 + third]).all()
    assert (matching_bins(f, 2, size, 0) == firing_bins(f, 2)).all()  # no size bins: frequency only
    chosen = [29, 30]  # the largest of the first firing bin, the smallest of the second
    draws = matched_random_features(f, chosen, 40, seed=0, n_bins=2, size_L=size, size_bins=3)
    assert all(20 <= a <= 28 and 31 <= b <= 39 for a, b in draws)  # same firing bin, same size third
    loose = matched_random_features(f, chosen, 40, seed=0, n_bins=2)
    assert any(a < 20 or b > 39 for a, b in loose)  # frequency alone draws from the whole firing bin
    with pytest.raises(ValueError, match="one size per latent"):
        matching_bins(f, 2, size[:10], 3)


def test_matched_controls_bad_input():
    f = _freq()
    with pytest.raises(ValueError, match=r"out of range.*0\.\.63"):
        matched_random_features(f, [3, 64], 2, 0)
    with pytest.raises(ValueError, match="finite"):
        matched_random_features(np.full(L, np.nan), [3], 2, 0)
    with pytest.raises(ValueError, match="fewer bins"):
        matched_random_features(f, list(range(6)), 2, 0)  # all dead latents chosen: nothing to match


def test_bootstrap_interval_contains_delta():
    rng = np.random.default_rng(0)
    a, b = rng.random(40) < 0.5, rng.random(40) < 0.7
    lo, hi = paired_bootstrap_ci(a, b, 1000, 0)
    d = b.mean() - a.mean()
    assert lo <= d <= hi and lo < hi


def test_run_intervention_statistics_and_json(rl, tasks, tmp_path):
    model, tok = rl
    cc = _crosscoder()
    res = run_intervention(model, tok, cc, "rl", [4, 8, 15, 16], _steer_factory(200.0), tasks,
                           n_controls=3, seed=1, firing_freq_L=_freq(), held_out={"bool"}, n_bins=4,
                           n_resamples=500)
    assert len(res.control_features) == 3
    changed = False
    for k, t in res.tasks.items():
        w0, w1 = np.array(t.correct_without), np.array(t.correct_with)
        assert len(w0) == len(w1) == t.n == 12
        assert t.delta == pytest.approx(w1.mean() - w0.mean())
        b, c = int((~w0 & w1).sum()), int((w0 & ~w1).sum())
        assert (t.newly_correct, t.newly_wrong) == (b, c)
        ref = binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
        assert t.mcnemar_p == pytest.approx(min(ref, 1.0))
        assert t.ci_low <= t.delta <= t.ci_high
        ctrl = np.abs(t.control_deltas)  # empirical two-sided p among the controls, +1 correction
        assert len(ctrl) == 3 and t.control_p == pytest.approx((1 + int((ctrl >= abs(t.delta) - 1e-12).sum())) / 4)
        assert t.held_out == (k == "bool")
        changed |= b + c > 0
    assert changed, "the steer should change some answers"
    s = res.summary()
    assert set(s["selection"]["tasks"]) == {"compare"} and set(s["held_out"]["tasks"]) == {"bool"}
    back = InterventionResult.load(res.save(tmp_path / "r.json"))
    assert back == res
    json.loads((tmp_path / "r.json").read_text())


def test_ablating_nothing_gives_zero_delta_everywhere(rl, tasks):
    model, tok = rl
    cc = _crosscoder()
    res = run_intervention(model, tok, cc, "rl", [], ablate, tasks, n_controls=2, firing_freq_L=_freq())
    for t in res.tasks.values():
        assert t.delta == 0.0 and t.control_deltas == [0.0, 0.0]
        assert t.correct_with == t.correct_without and t.mcnemar_p == 1.0
        assert (t.ci_low, t.ci_high) == (0.0, 0.0)


def test_run_intervention_bad_input(rl, tasks):
    model, tok = rl
    cc = _crosscoder()
    with pytest.raises(ValueError, match=r"out of range.*0\.\.63"):
        run_intervention(model, tok, cc, "rl", [2, 99], ablate, tasks, n_controls=0)
    with pytest.raises(ValueError, match="firing_freq_L"):
        run_intervention(model, tok, cc, "rl", [2], ablate, tasks, n_controls=2)
    with pytest.raises(ValueError, match="entries"):
        run_intervention(model, tok, cc, "rl", [2], ablate, tasks, n_controls=2, firing_freq_L=np.ones(10))
    with pytest.raises(ValueError, match="held_out"):
        run_intervention(model, tok, cc, "rl", [2], ablate, tasks, n_controls=0, held_out={"sort"})
    with pytest.raises(TypeError, match="Edit"):
        run_intervention(model, tok, cc, "rl", [2], lambda ids: None, tasks, n_controls=0)


def test_subset_accuracy_matches_the_masked_per_sample_arrays(rl, tasks):
    model, tok = rl
    cc = _crosscoder()
    mask = np.arange(12) % 3 == 0
    res = run_intervention(model, tok, cc, "rl", [4, 8], _steer_factory(200.0), tasks, n_controls=2,
                           subset={"compare": mask}, firing_freq_L=_freq(), n_bins=4, seed=2)
    t = res.tasks["compare"]
    w0, w1 = np.array(t.correct_without), np.array(t.correct_with)
    assert t.subset_n == 4
    assert t.subset_acc_without == pytest.approx(w0[mask].mean())
    assert t.subset_acc_with == pytest.approx(w1[mask].mean())
    assert t.subset_delta == pytest.approx(w1[mask].mean() - w0[mask].mean())
    b, c = int((~w0[mask] & w1[mask]).sum()), int((w0[mask] & ~w1[mask]).sum())
    assert t.subset_mcnemar_p == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0)
    # the controls' subset deltas: replay each control edit and mask by hand
    from featalign.interventions import intervene
    for ids, d_all, d_sub in zip(res.control_features, t.control_deltas, t.subset_control_deltas):
        with intervene(model, cc, "rl", _steer_factory(200.0)(tuple(ids))):
            got = score_problems(model, tok, tasks["compare"])
        assert d_all == pytest.approx(got.mean() - w0.mean())
        assert d_sub == pytest.approx(got[mask].mean() - w0[mask].mean())
    ctrl = np.abs(t.subset_control_deltas)
    assert len(ctrl) == 2 and t.subset_control_p == pytest.approx(
        (1 + int((ctrl >= abs(t.subset_delta) - 1e-12).sum())) / 3)
    u = res.tasks["bool"]  # no subset given for this task
    assert u.subset_n == 0 and u.subset_acc_with is None
    with pytest.raises(ValueError, match="one entry per problem"):
        run_intervention(model, tok, cc, "rl", [4], ablate, tasks, n_controls=0, subset={"compare": mask[:5]})
    with pytest.raises(ValueError, match="not among the tasks"):
        run_intervention(model, tok, cc, "rl", [4], ablate, tasks, n_controls=0, subset={"sort": mask})


def test_sweep_matches_single_runs_and_reports_nonfinite_logits(rl, tasks, tmp_path):
    model, tok = rl
    cc = _crosscoder()
    f = _freq()
    ids = [4, 8, 15, 16]
    edit_at = lambda ids, c: steer(ids, c, torch.ones(len(ids)), decoder="base")  # noqa: E731
    # 1e39 is a finite float but overflows float32: the residual stream becomes inf, the logits NaN
    with pytest.warns(RuntimeWarning, match=r"NaN/inf logits at coefficients \[1e\+39\]"):
        sw = coefficient_sweep(model, tok, cc, "rl", ids, edit_at, [0.0, 200.0, 1e39], tasks,
                               n_controls=2, firing_freq_L=f, n_bins=4, n_resamples=200, seed=1, progress=False)
    assert sw.coefs == [0.0, 200.0, 1e39]
    for t in sw.results[0].tasks.values():  # coefficient 0: a no-op, controls too
        assert t.delta == 0.0 and t.control_deltas == [0.0, 0.0] and t.nonfinite_frac == 0.0
    single = run_intervention(model, tok, cc, "rl", ids, _steer_factory(200.0), tasks, n_controls=2,
                              firing_freq_L=f, n_bins=4, n_resamples=200, seed=1)
    assert sw.results[1] == single  # the sweep's shared baseline changes nothing
    assert sw.nonfinite_coefs() == [1e39]
    for t in sw.results[2].tasks.values():
        assert t.nonfinite_frac == 1.0 and t.acc_with == 0.0  # every row NaN: every answer wrong
    rows = sw.rows()
    assert len(rows) == 3 * len(tasks)
    assert all(r["control_lo"] <= r["control_hi"] for r in rows)
    assert sw.plot(tmp_path / "sweep.png").stat().st_size > 1000
    back = SweepResult.load(sw.save(tmp_path / "sweep.json"))
    assert back.coefs == sw.coefs and back.results[1] == sw.results[1]
    assert back.provenance["featalign_version"]
    with pytest.raises(ValueError, match="coefs is empty"):
        coefficient_sweep(model, tok, cc, "rl", ids, edit_at, [], tasks, n_controls=0)
