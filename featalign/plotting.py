"""The one way featalign gets matplotlib: pyplot on the Agg backend (files only), except inside a
notebook, whose inline backend is kept so that figures still show there."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    if "inline" not in matplotlib.get_backend():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 110) -> Path:
    """tight_layout, write `path` (its folder is created), close the figure."""
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return Path(path)
