"""Run directories: one writer at a time, a failed start leaves nothing behind, and a last
batch of a single example trains (in one process and on every rank under torchrun)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bnlab.data import BatchLoader, write_idx
from bnlab.errors import RunDirError, UnavailableError
from bnlab.train import Run, TrainConfig, train
from bnlab.train.rundir import RunDir
from tests.data.fakes import write_fake_dataset
from tests.norm.dist_helpers import free_port, run_ranks
from tests.reliability.conftest import RUN_FLAGS, assert_one_line_error, copy_of, snapshot

# A real `bnlab train` that takes the run directory's lock, then stalls while loading data.
STALLED_WRITER = """
import sys, time
import bnlab.train.batches as batches
def stall(*args, **kwargs):
    print("holding the lock", flush=True)
    time.sleep(600)
batches.loaders = stall
from bnlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_second_writer_is_refused_then_a_killed_writers_lock_is_recovered(bnlab_cli, pristine,
                                                                          tmp_path):
    out, data = tmp_path / "run", str(pristine["data"])
    writer = subprocess.Popen([sys.executable, "-c", STALLED_WRITER, "train", "--out", str(out),
                               "--data-dir", data, *RUN_FLAGS], stdout=subprocess.PIPE,
                              text=True, env=os.environ.copy())
    try:
        assert writer.stdout.readline() == "holding the lock\n"
        for second in (["--resume"], []):  # a resume and a fresh start: both refused
            r = bnlab_cli("train", "--out", out, "--data-dir", data, *RUN_FLAGS, *second)
            assert_one_line_error(r, str(out), "in use", f"pid {writer.pid}")
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert (out / ".lock").read_text().strip() == str(writer.pid)  # left by the killed writer
    r = bnlab_cli("train", "--out", out, "--data-dir", data, *RUN_FLAGS)
    assert r.rc == 0, r
    assert Run(out).done and not (out / ".lock").exists()


@pytest.mark.parametrize("content", ["999999999\n", "", "garbage \x00\xff"],
                         ids=["dead-pid", "empty", "garbage"])
def test_stale_lock_file_is_taken_over(bnlab_cli, pristine, tmp_path, content):
    run = copy_of(pristine, "unfinished", tmp_path)
    (run / ".lock").write_text(content, errors="surrogateescape")
    r = bnlab_cli("train", "--out", run, "--resume", "--data-dir", pristine["data"],
                  "--epochs", "2", *RUN_FLAGS[2:])
    assert r.rc == 0, r
    assert Run(run).done and not (run / ".lock").exists()


def test_lock_in_the_python_api(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.lock():
        assert (rd.path / ".lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunDirError, match=rf"in use.*pid {os.getpid()}"), rd.lock():
            pass
        with pytest.raises(RunDirError, match="in use"):  # train() takes the same lock
            train(TrainConfig(epochs=1), rd.path, log=lambda m: None)
    assert not rd.path.exists()  # created for the lock, empty: removed again
    with pytest.raises(ZeroDivisionError), rd.lock():
        1 / 0  # noqa: B018
    with rd.lock():  # released on error
        pass


def _locked_ranks(rank: int, world: int, out: str) -> dict:
    start = time.monotonic()
    try:
        train(TrainConfig(epochs=1, dist_timeout=60.0, progress=False), out, log=lambda m: None)
    except Exception as e:
        return {"error": type(e).__name__, "message": str(e),
                "seconds": time.monotonic() - start}
    return {"error": None}


def test_under_torch_distributed_a_refused_start_stops_every_rank_at_once(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.lock():
        results = run_ranks(_locked_ranks, 2, tmp_path, str(rd.path), timeout=90)
    assert results[0]["error"] == RunDirError.__name__ and "in use" in results[0]["message"]
    assert results[1]["error"] == UnavailableError.__name__
    assert "rank 0 could not start" in results[1]["message"]
    assert results[1]["seconds"] < 30  # told at once, not after --dist-timeout (60 s)


def test_a_failed_resume_is_one_line_and_changes_nothing(bnlab_cli, pristine, tmp_path):
    run = copy_of(pristine, "unfinished", tmp_path)
    before = snapshot(run)
    r = bnlab_cli("train", "--out", run, "--resume", "--data-dir", pristine["data"],
                  "--epochs", "2", "--lr", "0.5", *RUN_FLAGS[2:])
    assert_one_line_error(r, f"cannot resume {run}", "lr: 1.0 != 0.5", "pass the run's own flags")
    r = bnlab_cli("train", "--out", run, "--data-dir", pristine["data"], "--epochs", "2",
                  *RUN_FLAGS[2:])
    assert_one_line_error(r, "already holds a run", "--resume")
    assert snapshot(run) == before


# ---- a start that fails leaves nothing that blocks a retry ---------------------------------------

def _train_images(data: Path, images: torch.Tensor) -> None:
    write_idx(data / "train-images-idx3-ubyte.gz", images)


FAILED_STARTS = {  # name -> (how the data are damaged, extra flags, needle of the error)
    "images-of-another-size": (
        lambda d: _train_images(d, torch.zeros(64, 32, 32, dtype=torch.uint8)), [], "32x32"),
    "incomplete-data-dir": (lambda d: (d / "t10k-images-idx3-ubyte.gz").unlink(), [],
                            "holds no complete copy"),
    "batch-of-one": (lambda d: None, ["--batch-size", "1"], "--batch-size of at least 2"),
    "normalize-constant-images": (
        lambda d: _train_images(d, torch.full((64, 28, 28), 7, dtype=torch.uint8)),
        ["--normalize"], "without --normalize"),
}


@pytest.mark.parametrize("failure", sorted(FAILED_STARTS))
@pytest.mark.parametrize("out_exists", [False, True], ids=["new-out", "empty-out"])
def test_failed_start_leaves_nothing_that_blocks_a_retry(bnlab_cli, pristine, tmp_path,
                                                         failure, out_exists):
    damage, flags, needle = FAILED_STARTS[failure]
    data, out = copy_of(pristine, "data", tmp_path), tmp_path / "out"
    damage(data)
    if out_exists:
        out.mkdir()
    r = bnlab_cli("train", "--out", out, "--data-dir", data, *RUN_FLAGS, *flags)
    assert_one_line_error(r, needle)
    assert (list(out.iterdir()) == []) if out_exists else not out.exists()
    r = bnlab_cli("train", "--out", out, "--data-dir", pristine["data"], *RUN_FLAGS)
    assert r.rc == 0, r  # no --resume needed: nothing of the failed start is left
    assert Run(out).done


# ---- a last batch of a single example -----------------------------------------------------------

@pytest.mark.parametrize("n,batch,world,drop_last,spans", [
    (65, 64, 1, False, [(0, 65)]),  # a last batch of 1 joins the one before
    (129, 64, 1, False, [(0, 64), (64, 129)]),
    (66, 64, 1, False, [(0, 64), (64, 66)]),  # 2 is enough for one process
    (67, 64, 2, False, [(0, 67)]),  # 3 would leave one rank 1 example
    (68, 64, 2, False, [(0, 64), (64, 68)]),
    (65, 64, 2, True, [(0, 64)]),  # drop_last drops it, as asked
    (1, 64, 1, False, [(0, 1)]),  # nothing to join: the trainer refuses it
], ids=["65/64", "129/64", "66/64", "67/64x2", "68/64x2", "drop-last", "one-example"])
def test_batch_spans(n, batch, world, drop_last, spans):
    images, labels = torch.zeros(n, 2, 2, dtype=torch.uint8), torch.arange(n) % 10
    shares = [BatchLoader(images, labels, batch, drop_last=drop_last, part=(r, world))
              for r in range(world)]
    assert shares[0].spans == spans
    assert [shares[0].global_batch_size(i) for i in range(len(spans))] == [b - a
                                                                          for a, b in spans]
    seen = torch.cat([y for ld in shares for _, y in ld.batches(3)])  # every rank's shares
    assert len(seen) == shares[0].num_examples == spans[-1][1]
    assert drop_last or sorted(seen.tolist()) == sorted(labels.tolist())  # each example once


@pytest.mark.parametrize("model", ["lenet-bn", "mlp"])
def test_last_batch_of_one_example_trains(bnlab_cli, tmp_path, model):
    data = write_fake_dataset(tmp_path / "data", n_train=65, n_test=32)
    out = tmp_path / "run"
    r = bnlab_cli("train", "--out", out, "--data-dir", data, "--model", model, "--batch-size",
                  "64", "--epochs", "2", "--threads", "1", "--no-progress")
    assert r.rc == 0, r
    assert Run(out).done and len(Run(out).metrics) == 2


def test_last_batch_of_one_example_under_torchrun(tmp_path):
    """Two CPU ranks, 65 examples in batches of 64: the last global batch (1 example) would
    leave one rank with nothing and BatchNorm on the other with one value per channel."""
    data = write_fake_dataset(tmp_path / "data", n_train=65, n_test=32)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", "--master_addr=127.0.0.1", "-m", "bnlab", "train",
           "--out", str(tmp_path / "run"), "--data-dir", str(data), "--epochs", "1",
           "--batch-size", "64", "--no-progress", "--threads", "1", "--model", "mlp"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    done = Run(tmp_path / "run")
    assert done.done and done.dir.read_done()["world_size"] == 2
