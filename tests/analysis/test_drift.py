import json

import numpy as np
import pytest
import torch

from featalign.analysis.drift import (
    CheckpointSeries, DriftConfig, SeriesError, compare_stabilisation, drift_joint, drift_pairwise,
    series_from_dirs, stabilisation_index,
)

K, T, D = 10, 5, 64


def _series(seed=0):
    """Joint decoders [L, 1 + 5, D] with a known story (k = 10):

    growing features 0..9: base norm 0.1, checkpoint norm 0.2, 0.6, 1, 1, 1 and a direction that
    rotates until checkpoint 3 -> NRN .67, .86, .91, .91, .91; stabilise at checkpoint 3.
    transient features 10..19: NRN .91 at checkpoints 1-2, then 0.5 -> the top-10 at checkpoints 1-2.
    features 20..59: shared (NRN 0.5).
    """
    g = torch.Generator().manual_seed(seed)
    L = 60
    u = torch.nn.functional.normalize(torch.randn(L, D, generator=g), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(L, D, generator=g), dim=-1)
    dec = torch.zeros(L, 1 + T, D)
    dec[:, 0] = 0.5 * u
    for t in range(1, T + 1):
        dec[20:, t] = 0.5 * u[20:]
    grow = [0.2, 0.6, 1.0, 1.0, 1.0]
    mix = [0.0, 0.5, 1.0, 1.0, 1.0]  # direction v -> u by checkpoint 3
    for t in range(T):
        d = torch.nn.functional.normalize((1 - mix[t]) * v[:10] + mix[t] * u[:10], dim=-1)
        dec[:10, 1 + t] = grow[t] * d
        dec[10:20, 1 + t] = (1.0 if t < 2 else 0.1) * u[10:20]
    dec[:20, 0] *= 0.2  # base norm 0.1 for the non-shared features
    return dec


def test_joint_drift_known_stabilisation():
    res = drift_joint(_series(), DriftConfig(top_k=K, specific_threshold=0.9, stable_tol=0.02))
    assert res.overlap == [1.0, 0.0, 1.0, 1.0]
    assert sorted(res.final_features) == list(range(10))
    assert res.stabilisation == [3] * 10
    assert res.topk_entry == [3] * 10
    assert res.new_features == [10, 0, 10, 0, 0]
    assert res.n_specific == [10, 10, 10, 10, 10]
    s = res.summary()
    assert s["stabilisation_median"] == 3 and s["mean_overlap"] == 0.75
    c = np.array(res.curves["nrn"])
    assert c.shape == (10, 5) and c[:, 2:] == pytest.approx(1 / 1.1, abs=1e-5)
    assert np.array(res.curves["cos_base"])[:, 2:] == pytest.approx(1.0, abs=1e-5)


def test_pairwise_drift_matches_joint():
    dec = _series()
    g = torch.Generator().manual_seed(1)
    decs = []
    for t in range(1, T + 1):
        perm = torch.randperm(len(dec), generator=g)  # latent order differs between crosscoders
        decs.append(dec[perm][:, [0, t]])
    res = drift_pairwise(decs, DriftConfig(top_k=K, stable_tol=0.02))
    joint = drift_joint(dec, DriftConfig(top_k=K, stable_tol=0.02))
    assert res.overlap == joint.overlap
    assert sorted(res.stabilisation) == joint.stabilisation
    assert res.topk_entry == [3] * 10
    assert res.new_features == joint.new_features


def test_stabilisation_index_hand_case():
    s = np.array([[0.1, 0.5, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9], [0.9, 0.1, 0.9, 0.9]])
    c = np.ones_like(s)
    assert stabilisation_index(s, c, 0.01, 0.9).tolist() == [3, 1, 3]
    c[1, 1] = 0.5  # direction off at checkpoint 2
    assert stabilisation_index(s, c, 0.01, 0.9).tolist() == [3, 3, 3]


def test_compare_stabilisation():
    early = drift_joint(_series(), DriftConfig(top_k=K, stable_tol=0.02), series="sft")
    late = drift_joint(_series(), DriftConfig(top_k=K, stable_tol=0.02), series="rl")
    late.stabilisation = [5] * 10
    c = compare_stabilisation(early, late)
    assert c["median_diff"] == -2 and c["median_diff_95"] == [-2, -2] and c["mannwhitney_p_a_earlier"] < 1e-3


def _ckpt_dirs(tmp_path, metas):
    dirs = []
    for i, m in enumerate(metas):
        d = tmp_path / f"c{i}"
        d.mkdir(parents=True)
        (d / "featalign.json").write_text(json.dumps(m))
        dirs.append(d)
    return dirs


def test_series_errors(tmp_path):
    good = series_from_dirs("sft", "base", _ckpt_dirs(tmp_path / "a", [{"checkpoint": k, "step": 10 * k} for k in (3, 1, 2)]))
    assert [c.index for c in good.checkpoints] == [1, 2, 3] and good.names == ["base", "sft@1", "sft@2", "sft@3"]
    with pytest.raises(SeriesError, match=r"gap: checkpoint\(s\) \[3\] missing"):
        series_from_dirs("sft", "base", _ckpt_dirs(tmp_path / "b", [{"checkpoint": k} for k in (1, 2, 4)]))
    with pytest.raises(SeriesError, match="unknown order"):
        series_from_dirs("rl", "base", _ckpt_dirs(tmp_path / "c", [{"checkpoint": 1}, {}]))
    with pytest.raises(SeriesError, match="duplicate"):
        series_from_dirs("rl", "base", ["x", "y"], steps=[5, 5])
    with pytest.raises(SeriesError, match="gap"):
        series_from_dirs("rl", "base", ["x", "y", "z"], steps=[10, 20, 50])
    s = series_from_dirs("rl", "base", ["x", "y", "z"], steps=[13, 26, 38])  # rounded spacing is fine
    assert [c.index for c in s.checkpoints] == [1, 2, 3]
    with pytest.raises(SeriesError, match="no checkpoints"):
        CheckpointSeries("x", "b", []).validate()


def test_organism_series(tiny_organisms):
    from featalign.analysis.drift import series_from_organisms

    s = series_from_organisms(tiny_organisms, "rl")
    assert len(s.checkpoints) == 5 and s.checkpoints[-1].path.endswith("ckpt-5")
