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

import platform
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

from bnlab.studies.sweep_jobs import (
    Job,
    Outcome,
    Sweep,
    read_tree,
    train_here,
    write_tree,
)
from bnlab.train import Run
from bnlab.train.rundir import RunDir

__all__ = ["Job", "Outcome", "Sweep", "read_tree", "run_jobs", "session", "write_tree"]


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


