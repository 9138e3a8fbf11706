"""Figures as pure functions of run directories (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bnlab.train.run import Run

__all__ = ["plot_curves"]

PANELS = (("train_loss", "train loss"), ("train_acc", "train accuracy"),
          ("test_acc", "test accuracy"))


def plot_curves(runs: Sequence[Run], path: str | Path, labels: Sequence[str] | None = None,
                title: str = "") -> Path:
    """Loss, train accuracy and test accuracy per epoch, one line per run, side by side."""
    labels = list(labels) if labels is not None else [r.name for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    for run, label in zip(runs, labels, strict=True):
        rows = run.metrics
        epochs = [r["epoch"] for r in rows]
        style = "--" if "torch" in label else "-"
        for ax, (key, _) in zip(axes, PANELS, strict=True):
            ax.plot(epochs, [r[key] for r in rows], style, marker="o", ms=3, label=label)
    for ax, (_, name) in zip(axes, PANELS, strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
