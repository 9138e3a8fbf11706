"""Data-parallel training: 2 gloo ranks with SyncBN reproduce the single-process run."""

import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from bnlab.train import Run, TrainConfig, train
from tests.norm.dist_helpers import free_port, run_ranks

CFG = TrainConfig(model="lenet-bn", norm="bnlab", epochs=2, limit_train=1024, limit_test=500,
                  batch_size=128, threads=1, progress=False, sync_bn=True)


def quiet(msg: str) -> None:
    pass


def rank_train(rank: int, world: int, out: str) -> list[dict]:
    return train(CFG, out, log=quiet).metrics


def strip(rows):
    return [{k: v for k, v in r.items() if k in ("train_loss", "train_acc", "test_acc")}
            for r in rows]


def test_two_ranks_with_sync_bn_reproduce_single_process(tmp_path):
    single = train(CFG, tmp_path / "single", log=quiet)
    results = run_ranks(rank_train, 2, tmp_path, str(tmp_path / "ddp"), timeout=120)
    assert results[0] == results[1] == Run(tmp_path / "ddp").metrics  # rank 0 wrote them
    for a, b in zip(strip(results[0]), strip(single.metrics), strict=True):
        # float32 training; the ranks sum conv gradients and merge statistics in another
        # order, so the runs agree to rounding that grows slowly through training.
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["train_acc"] == pytest.approx(b["train_acc"], abs=2 / 1024)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=2 / 500)
    files = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert files == ["DONE", "checkpoint.pt", "config.json", "metrics.jsonl"]


def dying_rank(rank: int, world: int, out: str) -> dict:
    import bnlab.data.loader as loader

    if rank == 1:  # rank 1 dies abruptly during its fourth batch
        original = loader.BatchLoader.batches

        def die_after_three(self, epoch=0):
            for i, batch in enumerate(original(self, epoch)):
                if i == 3:
                    os._exit(17)
                yield batch

        loader.BatchLoader.batches = die_after_three
    start = time.monotonic()
    try:
        train(replace(CFG, dist_timeout=20.0), out, log=quiet)
    except Exception as e:  # what the surviving rank sees
        return {"error": f"{type(e).__name__}: {e}", "seconds": time.monotonic() - start}
    return {"error": None, "seconds": time.monotonic() - start}


def test_a_dead_rank_makes_the_other_fail_fast(tmp_path):
    survivor, _ = run_ranks(dying_rank, 2, tmp_path, str(tmp_path / "ddp"), timeout=90,
                            dead=frozenset({1}))
    # The survivor fails with an error (gloo notices the closed connection), within the
    # 20 s collective timeout plus start-up, instead of hanging.
    assert survivor["seconds"] < 45, survivor
    assert "rank 0 of 2 stopped" in survivor["error"] and "another rank died" in survivor["error"]


def test_torchrun_command_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", "--master_addr=127.0.0.1", "-m", "bnlab", "train",
           "--out", str(tmp_path / "run"), "--sync-bn", "--epochs", "1", "--limit-train", "512",
           "--limit-test", "200", "--batch-size", "128", "--no-progress", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("epoch  1:") == 1  # only rank 0 logs
    done = Run(tmp_path / "run")
    assert done.done and done.dir.read_done()["world_size"] == 2
