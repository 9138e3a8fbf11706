"""Progress bars (tqdm, with an ETA) and TensorBoard events, read back as TensorBoard reads them."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnlab.train import TrainConfig, train
from bnlab.train.progress import Progress, wanted

TINY = dict(epochs=2, batch_size=32, limit_train=96, limit_test=64, device="cpu", threads=1)


def test_quiet_into_a_file_unless_asked(monkeypatch):
    monkeypatch.delenv("BNLAB_PROGRESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    stream = io.StringIO()
    bar = Progress(10, "epoch 1/2", stream=stream)
    bar.update(5, loss=0.5)
    bar.close()
    assert not bar.enabled and stream.getvalue() == ""
    monkeypatch.setenv("BNLAB_PROGRESS", "1")
    assert wanted(True, stream) and not wanted(False, stream)
    monkeypatch.setenv("BNLAB_PROGRESS", "0")
    assert not wanted(True, stream)


def test_bar_shows_count_values_and_eta(monkeypatch):
    monkeypatch.setenv("BNLAB_PROGRESS", "1")
    stream = io.StringIO()
    bar = Progress(10, "epoch 1/2", stream=stream)
    bar.update(3, loss=0.25)
    bar.bar.refresh()
    text = stream.getvalue()
    bar.close()
    assert "epoch 1/2" in text and "3/10" in text and "loss=0.250" in text
    assert "<" in text  # tqdm's [elapsed<remaining]: the ETA


def test_study_bar_says_run_n_of_total(monkeypatch):
    monkeypatch.setenv("BNLAB_PROGRESS", "1")
    stream = io.StringIO()
    bar = Progress(24, "[lr]", stream=stream, unit="run",
                   bar_format="{desc} run {n_fmt} of {total_fmt}, ETA {remaining} |{bar}|")
    bar.update(7)
    bar.bar.refresh()
    bar.close()
    assert "[lr] run 7 of 24, ETA " in stream.getvalue()


def _events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0,
                                                                   "histograms": 0})
    acc.Reload()
    return acc


def test_tensorboard_events_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("BNLAB_PROGRESS", "0")
    run = train(TrainConfig(**TINY, tensorboard=True), tmp_path / "run", log=lambda m: None)
    acc = _events(run.path)
    tags = acc.Tags()
    steps = acc.Scalars("step/loss")
    assert [s.step for s in steps] == list(range(6))  # 2 epochs x 3 batches
    assert all(s.value > 0 for s in steps)
    assert [s.value for s in acc.Scalars("step/lr")] == [pytest.approx(1.0)] * 6
    test_acc = acc.Scalars("epoch/test_acc")
    assert [s.step for s in test_acc] == [1, 2]
    assert [s.value for s in test_acc] == pytest.approx([m["test_acc"] for m in run.metrics])
    histograms = tags["histograms"]
    assert any(t.endswith("/running_var") for t in histograms), histograms
    # LeNet-BN: 4 BatchNorm layers, 4 histograms each, one per epoch
    assert len([t for t in histograms if t.startswith("bn/")]) == 16
    var = next(t for t in histograms if t.endswith("/running_var"))
    assert [e.step for e in acc.Histograms(var)] == [1, 2]


def test_no_tensorboard_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("BNLAB_PROGRESS", "0")
    run = train(TrainConfig(**{**TINY, "epochs": 1}), tmp_path / "run", log=lambda m: None)
    assert run.done and not (run.path / "tensorboard").exists()


def test_train_command_says_it_compiles_and_draws_bars(tmp_path):
    # A compiler that fails at once: the message must come before the build, on the user's
    # terminal (stderr), and the run then goes on with the reference implementation.
    env = {**os.environ, "BNLAB_KERNELS": str(tmp_path / "kernels"), "CXX": "false",
           "BNLAB_PROGRESS": "1"}
    env.pop("BNLAB_FAST", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bnlab", "train", "--out", str(tmp_path / "run"),
         "--epochs", "1", "--batch-size", "32", "--limit-train", "64", "--limit-test", "32",
         "--device", "cpu", "--threads", "1"],
        capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    # on a line of its own, not glued to the bar that was on screen when the build began
    assert any(ln.startswith("bnlab: compiling the fast BatchNorm kernels") for ln in lines)
    assert "epoch 1/1" in proc.stderr and "/2 [" in proc.stderr and "evaluate" in proc.stderr


def test_bars_in_a_notebook_where_stderr_is_no_terminal(monkeypatch):
    import types

    monkeypatch.delenv("BNLAB_PROGRESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    shell = type("ZMQInteractiveShell", (), {})()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert wanted(True, io.StringIO())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not wanted(True, io.StringIO())  # plain IPython in a pipe: no bar


def test_study_draws_one_bar_over_its_runs(tmp_path, monkeypatch, capsys):
    from bnlab.studies.base import Arm, Findings, Study, run_study

    monkeypatch.setenv("BNLAB_PROGRESS", "1")
    tiny = TrainConfig(**{**TINY, "epochs": 1})
    study = Study("tiny", "does the bar count runs?",
                  lambda quick: [Arm("a", "A", tiny), Arm("b", "B", tiny)],
                  lambda results: Findings([{"arm": "A"}], "fine", lambda path: None), seeds=1)
    run_study(study, tmp_path / "s", log=lambda m: None)
    err = capsys.readouterr().err
    assert "[tiny] run 0 of 2, ETA" in err and "run 2 of 2" in err
    assert "epoch 1/1" not in err  # the runs inside a study draw no bars of their own
