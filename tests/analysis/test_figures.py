"""Figures a reader can read: the count bars name the intervals their rows were computed with and show a count
of 0 as a value, and the card histogram's x-axis spans the data."""

from __future__ import annotations

import numpy as np
import pytest

from featalign.analysis.cards import activation_histogram
from featalign.analysis.controls import count_interval
from featalign.analysis.plots import count_bars, count_bars_figure
from featalign.plotting import pyplot


def _rows(masks):
    out = []
    for i, m in enumerate(masks):
        ci = count_interval(m)
        out.append((f"pair{i}: tuned-only", ci.count, ci.low, ci.high, ci.n, ci.method))
    return out


def test_all_zero_counts_are_labelled_exact_intervals_and_shown_as_values(tmp_path):
    rows = _rows([np.zeros(1900, bool)] * 3)  # count_interval gives Clopper-Pearson intervals for 0
    fig = count_bars_figure(rows, title="tuned-only latents")
    ax = fig.axes[0]
    title = ax.get_title()
    assert "Clopper-Pearson" in title and "bootstrap" not in title.lower()
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["0 of 1900"] * 3
    # a marker at each count (0), inside the visible range, and the whiskers' tops inside it too
    (points,) = [c for c in ax.collections if len(c.get_offsets()) == 3]
    assert np.allclose(np.asarray(points.get_offsets())[:, 1], 0)
    lo, hi = ax.get_ylim()
    assert lo <= 0 and hi > max(r[3] for r in rows)
    pyplot().close(fig)
    assert count_bars(rows, tmp_path / "c.png", title="t").stat().st_size > 0


def test_mixed_counts_name_both_methods_and_a_bootstrap_only_figure_names_bootstrap():
    rng = np.random.default_rng(0)
    mixed = _rows([rng.random(500) < 0.02, np.zeros(500, bool)])
    assert {r[5] for r in mixed} == {"bootstrap", "clopper-pearson"}
    fig = count_bars_figure(mixed)
    title = fig.axes[0].get_title()
    assert "bootstrap" in title and "Clopper-Pearson" in title
    pyplot().close(fig)
    boot = _rows([rng.random(500) < 0.02, rng.random(500) < 0.05])
    fig = count_bars_figure(boot)
    title = fig.axes[0].get_title()
    assert "bootstrap" in title and "Clopper" not in title
    assert [t.get_text() for t in fig.axes[0].texts] == [f"{r[1]} of 500" for r in boot]
    pyplot().close(fig)


@pytest.mark.parametrize("acts", [
    {"base": list(np.linspace(2.3, 3.0, 50)), "rl": list(np.linspace(2.4, 2.9, 20)), "sft": []},
    {"base": [2.5], "rl": []},  # one value: a narrow window around it, not [0, 2.5]
])
def test_card_histogram_axis_fits_the_data(acts):
    fig = activation_histogram(acts)
    lo, hi = fig.axes[0].get_xlim()
    data = [a for v in acts.values() for a in v]
    assert lo < min(data) and hi > max(data)
    assert lo > 2.0 and hi - lo < 1.0  # it does not start at 0 for data at 2.3-3
    pyplot().close(fig)
