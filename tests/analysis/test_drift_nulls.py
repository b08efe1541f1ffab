"""Drift nulls: the shuffled-order permutation test, overlap intervals, and the identical-copies null run by
`drift_study` (the drift stage's code) on the tiny organisms."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from featalign.analysis.drift import (
    DriftConfig, checkpoint_orders, drift_joint, overlap_interval, shuffled_order_null,
)
from tests.analysis.test_drift import K, T, _series


def _slow_mean_overlap(dec, order, k):
    """Mean successive top-k overlap of the joint decoders with the checkpoints in `order`, by an explicit loop:
    NRN per latent and checkpoint, top-k by sorting (ties: the larger norm), set intersections."""
    models = [0, *(o + 1 for o in order)]
    norms = [[float(dec[i, m].norm()) for m in models] for i in range(len(dec))]
    tops = []
    for t in range(1, len(models)):
        nrn = [(n[t] / (n[0] + n[t]), n[t], i) for i, n in enumerate(norms)]
        tops.append({i for _, _, i in sorted(nrn, key=lambda r: (-r[0], -r[1]))[:k]})
    return sum(len(a & b) / k for a, b in zip(tops[:-1], tops[1:])) / (len(tops) - 1)


def test_shuffled_order_null_exact_against_a_slow_loop():
    dec, cfg = _series(), DriftConfig(top_k=K, stable_tol=0.02)

    def drift(order):
        return drift_joint(dec[:, [0, *(o + 1 for o in order)]], cfg)

    res = shuffled_order_null(drift, T, n_permutations=1000)
    slow = [_slow_mean_overlap(dec, p, K) for p in itertools.permutations(range(T))]
    observed = _slow_mean_overlap(dec, range(T), K)
    assert res["exact"] and res["n_permutations"] == 120 and res["observed"] == pytest.approx(observed) == 0.75
    assert res["null_values"] == pytest.approx(slow)
    assert res["p"] == pytest.approx(np.mean(np.array(slow) >= observed - 1e-12))
    # by hand: the top-10 is the transient set at checkpoints 1-2 and the grown set at 3-5; a mean overlap of 0.75
    # (the most there is) needs the two transient checkpoints side by side at one end: 2 ends x 2 x 3! of 120 orders
    assert res["p"] == pytest.approx(24 / 120)


def test_shuffled_order_null_random_orders_and_reversal():
    dec, cfg = _series(), DriftConfig(top_k=K, stable_tol=0.02)

    def drift(order):
        return drift_joint(dec[:, [0, *(o + 1 for o in order)]], cfg)

    res = shuffled_order_null(drift, T, n_permutations=50, seed=3)
    rng = np.random.default_rng(3)
    orders = [rng.permutation(T) for _ in range(50)]
    slow = np.array([_slow_mean_overlap(dec, o, K) for o in orders])
    assert not res["exact"] and res["null_values"] == pytest.approx(slow.tolist())
    assert res["p"] == pytest.approx((1 + (slow >= 0.75 - 1e-12).sum()) / 51)
    # the same checkpoints in an alternating order (transient, grown, transient, grown, grown): one alike pair of
    # four; only the 12 orders grown, transient, grown, transient, grown have fewer, so p = 108 / 120
    alt = dec[:, [0, 1, 3, 2, 4, 5]]
    res_alt = shuffled_order_null(lambda o: drift_joint(alt[:, [0, *(i + 1 for i in o)]], cfg), T)
    assert res_alt["observed"] == pytest.approx(0.25) and res_alt["p"] == pytest.approx(108 / 120)
    orders, exact = checkpoint_orders(3, 6)
    assert exact and sorted(orders) == sorted(itertools.permutations(range(3)))


def test_overlap_intervals_in_the_summary():
    s = drift_joint(_series(), DriftConfig(top_k=K, stable_tol=0.02)).summary()
    assert s["overlap"] == [1.0, 0.0, 1.0, 1.0]
    # a count of 0 or k of the 10: the exact Clopper-Pearson interval, 1 - 0.025^(1/10) by hand
    assert s["overlap_95"][1] == pytest.approx([0.0, 1 - 0.025 ** 0.1])
    assert s["overlap_95"][0] == pytest.approx([0.025 ** 0.1, 1.0])
    assert s["n_specific_last"]["count"] == 10 and s["n_specific_last"]["n"] == 60  # 10 specific of 60 alive
    lo, hi = overlap_interval(4, 10)
    # 4 of 10: a percentile bootstrap, whose limit is the Binomial(10, 0.4) quantiles (cdf 0.046 at 1 and 0.988
    # at 7, far from 0.025 / 0.975, so 2000 resamples land on the same counts)
    from scipy.stats import binom

    assert (lo, hi) == pytest.approx((binom.ppf(0.025, 10, 0.4) / 10, binom.ppf(0.975, 10, 0.4) / 10))


SMALL = dict(n_latents=64, k=4, steps=40, batch_size=256, top_k=8, eval_tokens=600, progress=False)


@pytest.fixture(scope="module")
def series_acts(tiny_organisms, tmp_path_factory):
    """The tiny organisms' rl series (base + 5 checkpoints), its activations (Activations) and its hook."""
    from featalign.analysis.drift import series_from_organisms
    from featalign.analysis.inputs import Activations, mixture_activations
    from featalign.models.hooks import default_hook

    s = series_from_organisms(tiny_organisms, "rl")
    hook = default_hook(tiny_organisms.config.n_layers)
    dirs = s.model_dirs()
    root = tmp_path_factory.mktemp("drift-nulls")
    x = mixture_activations(root / "acts", dirs, hook, 1500, "train", 0, progress=False)
    return s, Activations(x, list(dirs)), hook


def test_drift_study_nulls_on_tiny_organisms(series_acts, tmp_path):
    from featalign.analysis.config import AnalyzeConfig
    from featalign.analysis.stages import drift_nulls_markdown, drift_study
    from featalign.analysis.training import TRAINED_ON_FILE, activations_sha256
    from featalign.crosscoder import Crosscoder
    from tests.analysis.helpers import reference_joint_drift

    s, acts, hook = series_acts
    cfg = AnalyzeConfig(**SMALL, drift_permutations=1000)
    results, summary = drift_study({"rl": s}, acts.columns, hook, cfg, tmp_path)
    rl = summary["rl"]
    x_eval = acts.columns(*s.names)[: cfg.eval_tokens]

    # identical copies: one joint crosscoder over the base's activations 6 times, nothing specific in it
    copies = rl["null_copies"]
    cc = Crosscoder.load(tmp_path / copies["crosscoder"])
    trained_on = json.loads((tmp_path / copies["crosscoder"] / TRAINED_ON_FILE).read_text())
    assert trained_on["activations_sha256"] == activations_sha256(acts.columns(*["base"] * 6))
    assert copies["n_specific"] == [0] * 5 and copies["n_specific_last"]["count"] == 0
    assert copies["n_specific_last"]["method"] == "clopper-pearson"
    overlap, _ = reference_joint_drift(cc, acts.columns(*["base"] * 6)[: cfg.eval_tokens], cfg.top_k)
    assert copies["overlap"] == pytest.approx(overlap)

    # shuffled order: every one of the 120 orders, each recomputed by the slow reference on the series' crosscoder
    sh = rl["null_shuffled"]
    real = Crosscoder.load(tmp_path / "drift-rl-joint")
    slow = [np.mean(reference_joint_drift(real, x_eval, cfg.top_k, order=p)[0])
            for p in itertools.permutations(range(5))]
    assert sh["exact"] and sh["n_permutations"] == 120 and sh["null_values"] == pytest.approx(slow)
    assert sh["observed"] == pytest.approx(np.mean(reference_joint_drift(real, x_eval, cfg.top_k)[0]))
    assert sh["p"] == pytest.approx(np.mean(np.array(slow) >= sh["observed"] - 1e-12))
    assert len(rl["overlap_95"]) == 4 and all(lo <= o <= hi for o, (lo, hi) in zip(rl["overlap"], rl["overlap_95"]))
    md = "\n".join(drift_nulls_markdown(summary))
    assert "| rl |" in md and f"{sh['p']:.3g} (120, exact)" in md
    print("\nnulls on tiny rl:", json.dumps({"real_overlap": rl["overlap"], "real_n_specific_last": rl["n_specific"][-1],
          "copies_overlap": copies["overlap"], "copies_n_specific_last": copies["n_specific_last"],
          "shuffled": {k: v for k, v in sh.items() if k != "null_values"}}))

    # switched off: no null sections and no copies crosscoder
    cfg_off = AnalyzeConfig(**SMALL, drift_nulls=False)
    _, off = drift_study({"rl": s}, acts.columns, hook, cfg_off, tmp_path / "off")
    assert "null_copies" not in off["rl"] and "null_shuffled" not in off["rl"]
    assert not (tmp_path / "off" / copies["crosscoder"]).exists()
    assert off["rl"]["overlap"] == rl["overlap"]  # the same real analysis either way
    assert torch.equal(real.W_dec, Crosscoder.load(tmp_path / "off" / "drift-rl-joint").W_dec)


def test_shuffled_order_null_pairwise_equals_joint_on_a_matchable_series():
    """Pairwise crosscoders with their latents in another order each: the matched overlaps equal the joint ones in
    every checkpoint order, so the two nulls agree value for value (p = 24 / 120, as counted above)."""
    from featalign.analysis.drift import drift_pairwise

    dec, cfg = _series(), DriftConfig(top_k=K, stable_tol=0.02)
    g = torch.Generator().manual_seed(1)
    decs = []
    for t in range(1, T + 1):
        perm = torch.randperm(len(dec), generator=g)
        decs.append(dec[perm][:, [0, t]])
    pairwise = shuffled_order_null(lambda o: drift_pairwise([decs[i] for i in o], cfg), T)
    joint = shuffled_order_null(lambda o: drift_joint(dec[:, [0, *(i + 1 for i in o)]], cfg), T)
    assert pairwise["null_values"] == pytest.approx(joint["null_values"]) and pairwise["p"] == pytest.approx(24 / 120)
