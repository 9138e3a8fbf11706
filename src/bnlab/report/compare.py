"""``bnlab compare RUN_DIR...``: any runs side by side, as one figure and one table.

Writes into `out`: ``compare.png`` (train loss, train accuracy and test accuracy per epoch, one
line per run), ``compare.md`` (the table, with the figure) and ``compare.html`` (the same,
self-contained: the figure embedded). The table holds each run's configuration where the runs
differ, then its final and best numbers.

Run directories are read through ``Run`` (``bnlab.files``' checked readers: a damaged file is a
``CorruptFileError`` naming it), and every string from them is escaped where it lands: by
``h`` in HTML, for tables and HTML in Markdown, and for mathtext in the figure's legend.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnlab.files import write_files
from bnlab.report.html import CSS, Markup, h
from bnlab.train.run import Run

__all__ = ["Comparison", "compare", "comparison_rows"]

# Configuration shown first when it differs between runs; the rest of config.json follows.
KEY_FIELDS = ("model", "norm", "dataset", "optimizer", "lr", "batch_size", "epochs", "seed")
# Descriptions the trainer derives from `model` and `dataset` (a user network's repr and every
# state shape): they differ whenever the norm does, and would fill the table; left out.
DERIVED_FIELDS = ("model_info", "data_info")
RESULTS = (("epochs_done", "epochs done"), ("train_loss", "train loss"),
           ("train_acc", "train acc"), ("test_acc", "test acc"),
           ("best_test_acc", "best test acc"), ("wall_time", "wall time (s)"))


@dataclass(frozen=True)
class Comparison:
    figure: Path  # compare.png
    markdown: Path  # compare.md
    html: Path  # compare.html
    rows: list[dict[str, Any]]  # the table: "run", differing config fields, results


def _labels(directories: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Directory names, or the paths as given where two names are the same."""
    names = [Path(d).name or str(d) for d in directories]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, directories,
                                                                  strict=True)]


def comparison_rows(runs: Sequence[Run], labels: Sequence[str]) -> list[dict[str, Any]]:
    """One row per run: its label, the config fields that differ between runs, its results."""
    configs = [run.config.to_dict() for run in runs]
    keys = [*KEY_FIELDS, *(k for k in configs[0] if k not in (*KEY_FIELDS, *DERIVED_FIELDS))]
    differing = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    rows = []
    for run, label, config in zip(runs, labels, configs, strict=True):
        metrics = run.metrics
        last = metrics[-1] if metrics else {}
        tests = [m["test_acc"] for m in metrics if math.isfinite(m["test_acc"])]
        rows.append({"run": label, **{k: config.get(k) for k in differing},
                     "epochs_done": f"{len(metrics)}/{config['epochs']}",
                     **{k: last.get(k) for k in ("train_loss", "train_acc", "test_acc")},
                     "best_test_acc": max(tests) if tests else None,
                     "wall_time": last.get("wall_time")})
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _header(key: str) -> str:
    return dict(RESULTS).get(key, key)


def _md_cell(value: Any) -> str:
    # HTML is escaped (Markdown renders raw HTML), a pipe would split the cell, a newline the row
    text = html.escape(_cell(value), quote=False).replace("|", "\\|")
    return " ".join(text.split())


def _markdown(rows: list[dict[str, Any]], png: str) -> str:
    keys = list(rows[0])
    lines = ["# bnlab comparison", "", f"![train loss and accuracy per epoch]({png})", "",
             "| " + " | ".join(_md_cell(_header(k)) for k in keys) + " |",
             "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_md_cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _html(rows: list[dict[str, Any]], png: bytes) -> str:
    keys = list(rows[0])
    head = Markup("".join(h("<th>{}</th>", _header(k)) for k in keys))
    body = Markup("".join(h("<tr>{}</tr>", Markup("".join(h("<td>{}</td>", _cell(r[k]))
                                                          for k in keys))) for r in rows))
    return h("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'>"
             "<title>bnlab comparison</title><style>{}</style></head><body>"
             "<h1>bnlab comparison</h1>"
             "<img alt='train loss and accuracy per epoch' src='data:image/png;base64,{}'>"
             "<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table></body></html>",
             Markup(CSS), base64.b64encode(png).decode(), head, body)


def _legend_text(label: str) -> str:
    # matplotlib reads $...$ as mathtext (a stray one is an error) and hides labels that
    # start with an underscore
    text = label.replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text


def compare(directories: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]
            ) -> Comparison:
    """Compare the runs in `directories`; write compare.png/.md/.html into `out`."""
    from bnlab.report.figures import curves_figure, png_bytes

    if not directories:
        raise ValueError("compare needs at least one run directory")
    runs = [Run(d) for d in directories]  # every file is read and checked before writing
    labels = _labels(directories)
    rows = comparison_rows(runs, labels)
    png = png_bytes(curves_figure(runs, [_legend_text(lb) for lb in labels]))
    # all three or none (bnlab.files.write_files: no link followed, nothing half-written)
    figure, markdown, page = write_files(out, {
        "compare.png": png, "compare.md": _markdown(rows, "compare.png").encode(),
        "compare.html": _html(rows, png).encode()})
    return Comparison(figure, markdown, page, rows)
