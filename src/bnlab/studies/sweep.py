"""Where a study's runs train: one after another in this process, or as Ray tasks.

A study is a sweep of independent (arm, seed) runs, so it parallelizes without any
coordination between runs. Rather than a home-made process pool, the sweep runs on Ray, which
starts a local instance on this machine (``workers`` tasks of ``threads`` CPUs each) and runs the
same code unchanged on a cluster (``address``). ``Sweep(workers=1)`` without an address is the
in-process path of old: each run is ``train(...)`` in this process, and Ray is never imported.

On Ray a task trains its run into a temporary directory on whatever node runs it and returns
the directory's files; the driver (this process) writes them into the study's directory, each
file atomically and ``DONE`` last, under the run directory's lock. Workers therefore need no
shared filesystem, and a run directory is either absent, unfinished (no ``DONE``: trained again
or resumed) or complete. What follows from that:

* **Same numbers.** A run's record depends on its config alone: with a fixed thread count the
  files a worker sends back equal, number for number, those the in-process path writes
  (timings aside). ``threads`` is fixed on Ray (default: the cores divided among the workers).
* **Resume.** A finished run (``DONE``) is reused wherever it was trained, through ``train``'s
  own checks (a run whose config differs is refused); an unfinished one is sent to the worker,
  which resumes it from its checkpoint.
* **Bounded retries.** Ray retries a task whose worker process or node died ``retries`` times;
  then the sweep stops with one line naming the run. Finished runs stay written.
* **Quiet.** Ray's own logs (and the workers' output) stay out of the terminal unless
  ``debug``; the caller sees one line per finished run and one progress bar.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bnlab.errors import UserError
from bnlab.train import Run, TrainConfig, train
from bnlab.train.loop import Probe
from bnlab.train.rundir import DONE, LOCK, RunDir, atomic_write_bytes

__all__ = ["Job", "Outcome", "Sweep", "run_jobs", "session"]

OBJECT_STORE_BYTES = 200 * 1024**2  # a local instance's object store: results pass through it
RETRIES = 2  # retries of a run whose worker died, before the sweep stops


@dataclass(frozen=True)
class Sweep:
    """How to run a study's runs. `workers`: runs at a time (None: as many as fit the cores,
    or the cluster's CPUs, at `threads` each); `address`: an existing Ray cluster (None: this
    machine); `threads`: torch threads per run (None on Ray: the cores shared out)."""

    workers: int | None = 1
    address: str | None = None
    threads: int | None = None
    debug: bool = False
    retries: int = RETRIES

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise UserError(f"workers must be at least 1, not {self.workers}")
        if self.retries < 0:
            raise UserError(f"retries must be 0 or more, not {self.retries}")

    @property
    def in_process(self) -> bool:
        return self.workers == 1 and not self.address


@dataclass(frozen=True)
class Job:
    """One run of the sweep: its config, its directory (on the driver) and how to name it."""

    path: Path
    label: str
    config: TrainConfig
    probe: Callable[[], Probe] | None = None
    train_kw: dict[str, Any] = field(default_factory=dict)  # the user's network and data


@dataclass
class Outcome:
    """A finished run, and where it ran ("reused": finished by an earlier call)."""

    run: Run
    where: str
    seconds: float


def _silent(msg: str) -> None:
    pass


def train_here(job: Job) -> Run:
    return train(job.config, job.path, resume=True, log=_silent,
                 probe=job.probe() if job.probe else None, **job.train_kw)


def run_jobs(jobs: Sequence[Job], sweep: Sweep, *,
             finished: Callable[[Job, Outcome], None] = lambda job, outcome: None,
             running: Callable[[int], None] = lambda n: None) -> tuple[list[Run], dict[str, Any]]:
    """Train (or reuse) every job; returns their runs in order and a record of where they ran.

    `finished(job, outcome)` is called as each run completes, `running(n)` whenever the number
    of runs in flight changes.
    """
    if sweep.in_process:
        return _in_process(jobs, sweep, finished, running)
    from bnlab.studies import ray_sweep  # Ray is imported only here

    return ray_sweep.run(jobs, sweep, finished, running)


def session(sweep: Sweep) -> AbstractContextManager[None]:
    """Keep Ray up across several ``run_jobs`` calls (nothing to do in process)."""
    if sweep.in_process:
        return nullcontext()
    from bnlab.studies import ray_sweep

    return ray_sweep.session(sweep)


def _in_process(jobs: Sequence[Job], sweep: Sweep, finished: Callable[[Job, Outcome], None],
                running: Callable[[int], None]) -> tuple[list[Run], dict[str, Any]]:
    import time

    runs, where = [], {}
    host = platform.node()
    for job in jobs:
        job = replace(job, config=replace(job.config, threads=sweep.threads))
        reused = RunDir(job.path).done
        running(0 if reused else 1)
        start = time.perf_counter()
        run = train_here(job)
        outcome = Outcome(run, "reused" if reused else host, time.perf_counter() - start)
        where[str(job.path)] = outcome.where
        runs.append(run)
        running(0)
        finished(job, outcome)
    return runs, {"executor": "in-process", "workers": 1, "threads": sweep.threads,
                  "ran_on": where}


# ---- a run directory as files, both ways ----------------------------------------------------

def read_tree(path: Path) -> dict[str, bytes]:
    """Every file of a run directory (relative name -> bytes), without its lock and the
    temporaries of a killed writer."""
    files = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if p.is_file() and not p.is_symlink() and p.name != LOCK and ".tmp-" not in p.name:
            files[rel.as_posix()] = p.read_bytes()
    return files


def write_tree(path: Path, files: dict[str, bytes]) -> None:
    """Write a run's files into `path`, each atomically, ``DONE`` last: until ``DONE`` is
    there the run counts as unfinished, so a driver killed half-way leaves a run to redo."""
    for rel in sorted(files, key=lambda r: (r == DONE, r)):
        target = path / rel
        if not target.resolve().is_relative_to(path.resolve()) or rel.startswith("/"):
            raise UserError(f"refused a run file named {rel!r}: it would land outside {path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, files[rel])


def train_in_tmp(config: TrainConfig, files: dict[str, bytes],
                 probe: Callable[[], Probe] | None, train_kw: dict[str, Any],
                 memory_policy: str) -> tuple[dict[str, bytes], str]:
    """A worker's side of a run: train in a fresh temporary directory (resuming from `files`,
    the driver's unfinished run, if any) under the driver's memory policy (``bnlab.memory``,
    recorded in the run's provenance) and return the finished directory's files and the host
    it ran on. Errors come back as one line with the temporary path left out."""
    from bnlab import memory

    if memory.current() != memory_policy:
        memory.set_policy(memory_policy)
    with tempfile.TemporaryDirectory(prefix="bnlab-run-") as tmp:
        path = Path(tmp) / "run"
        if files:
            path.mkdir()
            write_tree(path, files)
        try:
            train(config, path, resume=True, log=_silent, probe=probe() if probe else None,
                  **train_kw)
        except Exception as e:
            text = str(e).replace(str(path), "the run directory")
            raise RunFailed(f"{type(e).__name__}: {text}") from None
        return read_tree(path), f"{platform.node()} (pid {os.getpid()})"


class RunFailed(RuntimeError):
    """A run's training raised on a worker: its message, with the worker's paths left out."""
