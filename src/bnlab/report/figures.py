"""Figures as pure functions of run directories (matplotlib, no display needed).

Every ``*_figure`` helper returns a ``matplotlib.figure.Figure`` (show it in a notebook, or
change it before saving); ``save`` is the one place that writes a PNG. Figures are made with
``Figure`` and drawn by ``FigureCanvasAgg`` directly, never through pyplot: importing bnlab or
saving a figure leaves the user's matplotlib backend and pyplot's list of open figures as
they were (no ``matplotlib.use``, no figure left to leak in a long notebook).
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bnlab.files import write_bytes
from bnlab.train.run import Run

__all__ = ["band", "bars_figure", "curves_figure", "new_figure", "plot_accuracy_and_loss",
           "plot_bars", "plot_curves", "png_bytes", "save"]


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] = (6.4, 4.0),
               squeeze: bool = True) -> tuple[Figure, Any]:
    """A pyplot-free ``plt.subplots``: (figure, axes) with a constrained layout."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save(fig: Figure, path: str | Path, title: str = "") -> Path:
    """Title the figure and write it as a PNG: the last step of every figure here."""
    if title:
        fig.suptitle(title)
    return write_bytes(path, png_bytes(fig, title))


def png_bytes(fig: Figure, title: str | None = None) -> bytes:
    """The figure drawn as a PNG, in memory (written out by ``bnlab.files`` only); the title
    also as the PNG's Title text, what a test (or a reader's tool) can check."""
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)  # draws with Agg whatever backend the user chose for their screen
    fig.savefig(buffer, format="png", dpi=110, metadata={"Title": title} if title else None)
    return buffer.getvalue()


PANELS = (("train_loss", "train loss"), ("train_acc", "train accuracy"),
          ("test_acc", "test accuracy"))


def curves_figure(runs: Sequence[Run], labels: Sequence[str] | None = None) -> Figure:
    """Loss, train accuracy and test accuracy per epoch, one line per run, side by side."""
    labels = list(labels) if labels is not None else [r.name for r in runs]
    fig, axes = new_figure(1, 3, figsize=(12, 3.6))
    for run, label in zip(runs, labels, strict=True):
        rows = run.metrics
        epochs = [r["epoch"] for r in rows]
        style = "--" if "torch" in label else "-"
        for ax, (key, _) in zip(axes, PANELS, strict=True):
            ax.plot(epochs, [r[key] for r in rows], style, marker="o", ms=3, label=label)
    for ax, (_, name) in zip(axes, PANELS, strict=True):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.2
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend()
    return fig


def plot_curves(runs: Sequence[Run], path: str | Path, labels: Sequence[str] | None = None,
                title: str = "") -> Path:
    """`curves_figure`, saved to `path`."""
    return save(curves_figure(runs, labels), path, title)


def band(ax: Any, xs: Sequence[float], series: Sequence[Sequence[float]], label: str,
         style: str = "-") -> None:
    """Mean line over seeds (`series`: one list of values per seed, aligned with `xs`) and a
    +- sample-std band, at the points where every seed's value is finite: a point missing in
    one seed (NaN, or a resumed run's gap) is left out, never averaged over fewer seeds. Short
    curves (under 12 points) get markers."""
    n = min(len(s) for s in series)
    cols = [(x, [float(s[i]) for s in series]) for i, x in enumerate(xs[:n])]
    pts = [(x, c) for x, c in cols if all(math.isfinite(v) for v in c)]
    if not pts:
        return
    x = [p[0] for p in pts]
    mean = [statistics.fmean(c) for _, c in pts]
    line, = ax.plot(x, mean, style, marker="o" if len(x) < 12 else None, ms=3, label=label)
    if len(series) > 1:
        std = [statistics.stdev(c) for _, c in pts]
        ax.fill_between(x, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)], alpha=0.15,
                        color=line.get_color())


def bars_figure(labels: Sequence[str], means: Sequence[float], stds: Sequence[float],
                ylabel: str,
                more: Sequence[tuple[str, Sequence[float], Sequence[float]]] = ()) -> Figure:
    """One bar per label, mean with a +-std error bar; `more` adds (ylabel, means, stds)
    panels side by side for the same labels."""
    panels = [(ylabel, means, stds), *more]
    width = max(4.0, 1.1 * len(labels))
    fig, axes = new_figure(1, len(panels), figsize=(width * len(panels), 4.0), squeeze=False)
    for ax, (name, m, sd) in zip(axes[0], panels, strict=True):
        ax.bar(range(len(labels)), m, yerr=sd, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        ax.set_ylabel(name)
        ax.grid(axis="y", alpha=0.3)
    return fig


def plot_bars(labels: Sequence[str], means: Sequence[float], stds: Sequence[float],
              path: str | Path, ylabel: str, title: str = "",
              more: Sequence[tuple[str, Sequence[float], Sequence[float]]] = ()) -> Path:
    """`bars_figure`, saved to `path`."""
    return save(bars_figure(labels, means, stds, ylabel, more), path, title)


def plot_accuracy_and_loss(rows: Sequence[dict[str, Any]], path: str | Path,
                           title: str) -> Path:
    """The studies' usual figure: final test accuracy and train loss per arm, mean +- std."""
    return plot_bars([r["arm"] for r in rows], [r["test_acc"] for r in rows],
                     [r["test_acc_std"] for r in rows], path, "final test accuracy", title,
                     more=[("final train loss", [r["train_loss"] for r in rows],
                            [r["train_loss_std"] for r in rows])])
