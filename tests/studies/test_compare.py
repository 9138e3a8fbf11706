"""bnlab compare: one figure and one table across runs; file-derived strings escaped."""

import json

import pytest

from bnlab.cli import main
from bnlab.errors import CorruptFileError
from bnlab.report.compare import compare
from bnlab.train import TrainConfig

HOSTILE = "<img src=x onerror=alert(1)>|$x_1$"


def _run(path, epochs, lr, done=None, **config):
    """A run directory as bnlab train writes it (config.json, metrics.jsonl), made by hand."""
    path.mkdir(parents=True)
    cfg = TrainConfig(epochs=epochs, lr=lr, **config)
    (path / "config.json").write_text(json.dumps(cfg.to_dict()))
    done = epochs if done is None else done
    rows = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + e / 100, "test_acc":
             0.4 + e / 100 - (0.05 if e == done and e > 1 else 0), "examples_per_sec": 1e3,
             "epoch_time": 2.0, "wall_time": 2.0 * e} for e in range(1, done + 1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_compare_writes_figure_markdown_and_html(tmp_path):
    a = _run(tmp_path / "a" / "run", 3, 0.1)
    b = _run(tmp_path / "b" / "run", 4, 1.0, done=2, norm="torch")
    result = compare([a, b], tmp_path / "out")
    assert result.figure.read_bytes().startswith(b"\x89PNG")
    rows = result.rows
    # same directory names: the paths as given tell them apart
    assert [r["run"] for r in rows] == [str(a), str(b)]
    assert [r["lr"] for r in rows] == [0.1, 1.0] and [r["norm"] for r in rows] == ["bnlab",
                                                                                "torch"]
    assert "model" not in rows[0]  # the same in every run: not a column
    assert [r["epochs_done"] for r in rows] == ["3/3", "2/4"]
    assert rows[0]["test_acc"] == pytest.approx(0.38) and rows[0]["best_test_acc"] == \
        pytest.approx(0.42)
    md = result.markdown.read_text()
    assert "![train loss and accuracy per epoch](compare.png)" in md
    assert "| run | norm | lr | epochs |" in md and "| 2/4 |" in md
    page = result.html.read_text()
    assert "data:image/png;base64,iVBOR" in page and page.count("<tr>") == 3


def test_strings_from_files_are_escaped(tmp_path):
    a = _run(tmp_path / "<i>one$\\frac{$", 1, 0.1, data_dir=HOSTILE)
    b = _run(tmp_path / "two", 1, 0.2)
    # unescaped, the legend's '$\\frac{...' would be broken mathtext: an error
    result = compare([a, b], tmp_path / "out")
    page = result.html.read_text()
    assert "<img src=x" not in page and "<i>one" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;|$x_1$" in page and "&lt;i&gt;one" in page
    md = result.markdown.read_text()
    assert "<img src=x" not in md and "&lt;img src=x onerror=alert(1)&gt;\\|$x_1$" in md
    header, row = (ln for ln in md.splitlines() if "| run |" in ln or "&lt;i&gt;one" in ln)
    assert row.count(" | ") == header.count(" | ") == 8  # the pipe in data_dir split no cell


def test_command_and_damaged_runs(tmp_path, capsys):
    a = _run(tmp_path / "a", 2, 0.1)
    out = tmp_path / "out"
    assert main(["compare", str(a), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"compare.png", "compare.md", "compare.html"}
    bad = _run(tmp_path / "bad", 2, 0.1)
    (bad / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert main(["compare", str(a), str(bad), "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "metrics.jsonl: line 1: no 'train_loss' value" in err and err.count("\n") == 1
    assert not (tmp_path / "o2").exists()  # checked before anything is written
    with pytest.raises(CorruptFileError):
        compare([bad], tmp_path / "o3")
    assert main(["compare", str(tmp_path / "nothing"), "--out", str(tmp_path / "o4")]) == 1
    assert "not a bnlab run directory" in capsys.readouterr().err
