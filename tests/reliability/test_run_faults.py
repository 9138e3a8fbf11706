"""Faults during training lose nothing: kill -9 at random points, torn writes, a full disk.

Every faulted run is resumed with --resume and must end with exactly the metrics of an
uninterrupted run with the same seed (timings aside), never having loaded a torn checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bnlab.train import Run, TrainConfig, train

ARGS = ["--model", "lenet-bn", "--epochs", "4", "--limit-train", "3072", "--limit-test", "500",
        "--batch-size", "128", "--threads", "2", "--no-progress"]
CFG = TrainConfig(model="lenet-bn", epochs=4, limit_train=3072, limit_test=500, batch_size=128,
                  threads=2, progress=False)
TIMING = ("examples_per_sec", "epoch_time", "wall_time")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def numbers(path: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in Run(path).metrics]


def bnlab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnlab", "train", *args]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list[dict], float]:
    """The uninterrupted run, and how long it trains after writing config.json."""
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = subprocess.Popen(bnlab_cmd("--out", str(out), *ARGS), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not (out / "config.json").exists() and proc.poll() is None:
        time.sleep(0.01)
    start = time.monotonic()
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    return numbers(out), time.monotonic() - start


def assert_clean_and_equal(out: Path, expected: list[dict]) -> None:
    assert numbers(out) == expected
    assert (out / "DONE").exists()
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == list(range(1, CFG.epochs + 1))


def kill_and_resume(tmp_path: Path, reference, seed: int) -> str:
    expected, duration = reference
    out = tmp_path / f"run{seed}"
    rng = random.Random(seed)
    proc = subprocess.Popen(bnlab_cmd("--out", str(out), *ARGS), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / "config.json").exists() and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, duration))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epochs_before = len(Run(out).metrics)
    r = subprocess.run(bnlab_cmd("--out", str(out), "--resume", *ARGS), env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_clean_and_equal(out, expected)
    return f"killed after {epochs_before} epochs"


@pytest.mark.parametrize("seed", range(3))
def test_kill_at_random_point_then_resume(tmp_path, reference, seed):
    kill_and_resume(tmp_path, reference, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 120))
def test_kill_at_random_point_then_resume_many(tmp_path, reference, seed):
    kill_and_resume(tmp_path, reference, seed)


TORN = """
import io, os, signal, sys
import torch
import bnlab.train.rundir as rundir
from bnlab.cli import main
calls = {"n": 0}
real_save = torch.save
def torn_save(obj, f, *a, **k):
    calls["n"] += 1
    if calls["n"] == 2:  # the second checkpoint: write half of it, then die
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)
rundir.torch.save = torn_save
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_checkpoint_write_never_loads_a_torn_file(tmp_path, reference):
    out = tmp_path / "torn"
    r = subprocess.run([sys.executable, "-c", TORN, "train", "--out", str(out), *ARGS],
                       env=ENV, capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL
    assert list(out.glob(".checkpoint.pt.*.tmp")), "the torn temporary file should be there"
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # the previous one, intact
    assert len(state["metrics"]) == 1
    r = subprocess.run(bnlab_cmd("--out", str(out), "--resume", *ARGS), env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming after epoch 1" in r.stdout
    assert_clean_and_equal(out, reference[0])


def test_no_space_left_while_checkpointing_keeps_the_previous_one(tmp_path, reference,
                                                                  monkeypatch):
    import bnlab.train.rundir as rundir

    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"\0" * 1000)  # some bytes made it, then the disk filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(rundir.torch, "save", full_disk)
    out = tmp_path / "full"
    with pytest.raises(OSError, match=r"No space left.*previous checkpoint is intact"):
        train(CFG, out, log=lambda m: None)
    monkeypatch.undo()
    assert not list(out.glob(".*.tmp"))
    assert len(torch.load(out / "checkpoint.pt", weights_only=True)["metrics"]) == 1
    train(CFG, out, resume=True, log=lambda m: None)
    assert_clean_and_equal(out, reference[0])


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


def test_real_full_disk_keeps_the_previous_checkpoint(tmp_path, reference):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "300k"):  # one ~200 KB checkpoint fits, a second copy not
        pytest.skip("mounting a small tmpfs needs root; the simulated ENOSPC test covers "
                    "the same path")
    try:
        out = disk / "run"
        with pytest.raises(OSError) as info:
            train(CFG, out, log=lambda m: None)
        assert info.value.errno == errno.ENOSPC
        assert "the previous checkpoint is intact" in str(info.value)
        assert not list(out.glob(".*.tmp"))
        saved = torch.load(out / "checkpoint.pt", weights_only=True)
        kept = len(saved["metrics"])
        assert kept >= 1 and len(Run(out).metrics) == kept
        moved = tmp_path / "moved"
        subprocess.run(["cp", "-r", str(out), str(moved)], check=True)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    train(CFG, moved, resume=True, log=lambda m: None)
    assert_clean_and_equal(moved, reference[0])
