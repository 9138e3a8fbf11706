"""The chapter notebooks execute end to end with the small budget, in a fresh kernel.

Each notebook is read into memory and executed there (the committed files, with their
outputs, are never rewritten), by a kernel running this interpreter: the kernelspec is written
into a temporary JUPYTER_PATH, so the test needs no ``ipykernel install`` on the machine.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest
from traitlets.config import Config

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
DOCS = NOTEBOOKS.parent / "docs" / "studies"
PATHS = [NOTEBOOKS / "batch_norm_chapter.ipynb", NOTEBOOKS / "batch_norm_chapter.zh-CN.ipynb"]
KERNEL = "bnlab-test"
CELL_TIMEOUT = 120  # seconds; the slowest cell (training) takes a few on 2 cores


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "bnlab test", "language": "python"}))
    return root


def outputs_text(nb: nbformat.NotebookNode) -> str:
    """Every stream and plain-text result of every code cell, joined."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
                parts.append(out["data"].get("text/markdown", ""))
    return "\n".join(parts)


def check_outputs(nb: nbformat.NotebookNode) -> None:
    """The key results each notebook prints, with the bounds they must meet."""
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors[0].get("evalue") if errors else ""
    text = outputs_text(nb)
    diffs = re.findall(r"max \|bnlab - torch\| / max \|torch\|\s+(.+?)\s+([0-9.e+-]+)\n",
                       text)
    assert len(diffs) == 7, diffs  # output, 3 gradients, 2 buffers, eval output
    assert all(float(d) < 1e-5 for _, d in diffs), diffs
    ratio, expected = re.search(r"variance update ratio torch/textbook\s+([0-9.]+)\s+"
                                r"\(M/\(M-1\) = \d+/\d+ = ([0-9.]+)\)", text).groups()
    assert abs(float(ratio) - float(expected)) < 1e-4
    assert re.search(r"'test_acc': 0\.\d+", text), "the training run's final metrics"
    # Section 3 and the learner's questions print the committed records (docs/studies/NAME).
    for study in ("chapter", "lr", "why-higher-lr", "batch-size", "train-with-running-averages",
                  "momentum", "axes"):
        assert f"[{study}] " in text and "verdict: " in text, study
    assert len(re.findall(r"^\[\S+\] .+\n    seeds: \d+", text, re.M)) == 6, "show_study"
    # each claim's wording as the committed record words it (records with primary comparisons)
    for study in ("lr", "why-higher-lr", "train-with-running-averages", "momentum", "axes"):
        record = json.loads((DOCS / study / "study.json").read_text())
        flat = " ".join(text.split())  # show_study wraps its lines at 100 characters
        for p in record.get("primary", []):
            assert f"claim {p['claim']['key']} (" in flat and p["wording"] in flat, (study, p)
    # Scale invariance with BN: the same loss at weight scales 1 and 10, the gradient / 10.
    bn = re.findall(r"with BN\s+weight scale\s+\S+: loss\s+(\S+), \|grad W\|\s+(\S+)", text)
    assert len(bn) == 2 and bn[0][0] == bn[1][0], bn
    assert float(bn[0][1]) / float(bn[1][1]) == pytest.approx(10, rel=1e-3)
    shifts = dict(re.findall(r"(\w*BatchNorm\w*)\s+d mean\(output\) / d shift = (\S+)", text))
    assert abs(float(shifts["BatchNorm1d"])) < 1e-6 < abs(float(shifts["RunningStatsBatchNorm"]))


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_notebook_executes(path: Path, kernel_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("BNLAB_NOTEBOOK_BUDGET", "small")
    nb = nbformat.read(path, as_version=4)
    # IPC sockets, not TCP ports: a port picked free can be taken by another process on a
    # shared machine before the kernel binds it.
    config = Config()
    config.KernelManager.transport = "ipc"
    # An absolute socket path: the kernel runs in notebooks/, the client here.
    config.KernelManager.ip = str(kernel_dir / f"ipc-{path.stem}")
    nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT, startup_timeout=60,
                            config=config,
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    check_outputs(nb)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_committed_outputs(path: Path) -> None:
    """The committed notebooks carry the outputs of a clean run (same checks as a live one)."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "commit the notebook executed"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), "executed top to bottom in one kernel"
    check_outputs(nb)


def test_translations_share_their_code() -> None:
    """The English and Chinese notebooks differ in prose only."""
    en, zh = (nbformat.read(p, as_version=4) for p in PATHS)
    assert [c.cell_type for c in en.cells] == [c.cell_type for c in zh.cells]
    assert [c.source for c in en.cells if c.cell_type == "code"] == \
        [c.source for c in zh.cells if c.cell_type == "code"]
    prose = [(a.source, b.source) for a, b in zip(en.cells, zh.cells, strict=True)
             if a.cell_type == "markdown"]
    assert all(a != b for a, b in prose)
    assert all(re.search(r"[\u4e00-\u9fff]", b) for _, b in prose)
