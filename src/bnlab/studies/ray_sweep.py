"""The Ray path of a sweep (``bnlab.studies.sweep``): runs as Ray tasks, results via the driver.

Imported only when a sweep asks for more than one worker or for a cluster, so the in-process
path never loads Ray. On this machine ``ray.init(address="local")`` starts a private instance
with ``workers * threads`` CPUs and a small object store (a run's files pass through it once);
with an address it joins the cluster there. The driver keeps at most ``workers`` tasks in flight
(on a cluster, by default, as many as its CPUs hold at ``threads`` each), writes each finished
run as it arrives, and stops Ray again if it started it.

A task that raises (a damaged run directory, data that do not fit) is not retried: the error
is the user's to fix and comes back as one line naming the run. A task whose worker process or
node died is retried by Ray itself (``max_retries``); after the last retry the sweep stops,
also with one line naming the run. Either way the runs finished so far are already written and
the same command resumes the rest.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import ray
import ray.exceptions

from bnlab import memory
from bnlab.studies.sweep_jobs import (
    OBJECT_STORE_BYTES,
    Job,
    Outcome,
    RunFailed,
    Sweep,
    read_tree,
    train_here,
    train_in_tmp,
    write_tree,
)
from bnlab.train import Run
from bnlab.train.rundir import RunDir

__all__ = ["bnlab_run", "run", "session"]


def bnlab_run(config: Any, files: dict[str, bytes], probe: Any, train_kw: dict[str, Any],
              memory_policy: str) -> tuple[dict[str, bytes], str]:
    """The task (its worker's process title reads ``ray::bnlab_run``): one run, trained in a
    temporary directory on the node that runs it; returns its files and where it ran."""
    files, host = train_in_tmp(config, files, probe, train_kw, memory_policy)
    node = ray.get_runtime_context().get_node_id()[:8]
    return files, f"{host}, Ray node {node}"


@contextmanager
def _quiet(debug: bool) -> Iterator[None]:
    """Without `debug`, drop the raylet's messages that Ray prints to stdout even with
    ``log_to_driver=False`` (e.g. "Task bnlab_run failed ... will be retried", with Ray's
    traceback): the sweep says itself, in one line, when a run fails for good. Ray has no
    switch for them; this wraps its printer while the sweep holds Ray, if Ray still has it."""
    from ray._private import worker as ray_worker

    show = getattr(ray_worker, "print_to_stdstream", None)
    if debug or show is None:
        yield
        return

    def printer(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            show(data, ignore_prefix)

    ray_worker.print_to_stdstream = printer
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = show


def _start(sweep: Sweep) -> tuple[int, int, str]:
    """Start or join Ray; returns (workers, threads per run, where: 'local' or the address)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no prompt, no network call
    quiet: dict[str, Any] = {
        "include_dashboard": False, "log_to_driver": sweep.debug,
        "logging_level": logging.INFO if sweep.debug else logging.ERROR}
    with warnings.catch_warnings():
        if not sweep.debug:
            warnings.simplefilter("ignore")
        if sweep.address:
            _reachable(sweep.address)
            try:
                ray.init(address=sweep.address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise RuntimeError(
                    f"cannot join the Ray cluster at {sweep.address} ({first}); start one with "
                    f"`ray start --head`, or give its address with --address or RAY_ADDRESS"
                ) from None
            threads = sweep.threads or 1
            cpus = int(ray.cluster_resources().get("CPU", 1))
            return sweep.workers or max(1, cpus // threads), threads, sweep.address
        cores = os.cpu_count() or 1
        threads = sweep.threads or max(1, cores // (sweep.workers or cores))
        workers = sweep.workers or max(1, cores // threads)
        ray.init(address="local", num_cpus=workers * threads,
                 object_store_memory=OBJECT_STORE_BYTES, **quiet)
        return workers, threads, "local"


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse, in one line and in seconds, a ``host:port`` nobody listens on: ``ray.init``
    would retry it for many minutes. Other forms (``ray://...``, ``auto``) go to Ray as they
    are."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or "/" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RuntimeError(
            f"cannot join the Ray cluster at {address}: nothing answers there ({e.strerror or e}); "
            f"start one with `ray start --head`, or give its address with --address or "
            f"RAY_ADDRESS") from None


_held: tuple[int, int, str] | None = None  # (workers, threads, cluster) while a session lasts


@contextmanager
def session(sweep: Sweep) -> Iterator[None]:
    """Ray started (or joined) once for several sweeps, e.g. every study of ``make docs``."""
    global _held
    with _quiet(sweep.debug):
        _held = _start(sweep)
        try:
            yield
        finally:
            _held = None
            ray.shutdown()


def run(jobs: Sequence[Job], sweep: Sweep, finished: Callable[[Job, Outcome], None],
        running: Callable[[int], None]) -> tuple[list[Run], dict[str, Any]]:
    if _held is None and not ray.is_initialized():
        with session(sweep):
            return run(jobs, sweep, finished, running)
    workers, threads, cluster = _held or (sweep.workers or 1, sweep.threads or 1, "joined")
    jobs = [replace(job, config=replace(job.config, threads=threads)) for job in jobs]
    task = ray.remote(bnlab_run).options(num_cpus=threads, max_retries=sweep.retries,
                                         retry_exceptions=False)
    runs: dict[int, Run] = {}
    where: dict[str, str] = {}
    waiting: list[int] = []
    for i, job in enumerate(jobs):  # finished runs: reused through train's own checks
        if RunDir(job.path).done:
            runs[i] = train_here(job)
            where[str(job.path)] = "reused"
            finished(job, Outcome(runs[i], "reused", 0.0))
        else:
            waiting.append(i)
    flight: dict[Any, tuple[int, float]] = {}
    shared: dict[tuple[int, ...], Any] = {}
    try:
        while waiting or flight:
            while waiting and len(flight) < workers:
                i = waiting.pop(0)
                job = jobs[i]
                files = read_tree(job.path) if job.path.is_dir() else {}  # resumed there
                ref = task.remote(job.config, files, job.probe, _shared(job.train_kw, shared),
                                  memory.current())
                flight[ref] = (i, time.perf_counter())
            running(len(flight))
            ready, _ = ray.wait(list(flight), num_returns=1)
            i, start = flight.pop(ready[0])
            job = jobs[i]
            files, host = _result(ready[0], job, sweep)
            with RunDir(job.path).lock():
                write_tree(job.path, files)
            runs[i], where[str(job.path)] = Run(job.path), host
            running(len(flight))
            finished(job, Outcome(runs[i], host, time.perf_counter() - start))
    finally:
        for ref in flight:
            ray.cancel(ref, force=True)
    return [runs[i] for i in range(len(jobs))], {
        "executor": "ray", "cluster": cluster, "workers": workers, "threads": threads,
        "ran_on": where}


def _shared(train_kw: dict[str, Any], shared: dict[tuple[int, ...], Any]) -> Any:
    """The user's network and data put into Ray's object store once for all the runs that
    share them (every arm of a study does), not copied again with each task."""
    if not train_kw:
        return train_kw
    key = tuple(id(v) for v in train_kw.values())
    if key not in shared:
        shared[key] = ray.put(train_kw)
    return shared[key]


def _result(ref: Any, job: Job, sweep: Sweep) -> tuple[dict[str, bytes], str]:
    """The task's files, or one line naming the run that failed."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # the training raised: not retried
        cause = e.cause if isinstance(e.cause, RunFailed) else e
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise RuntimeError(f"run {job.label} ({job.path}) failed: {first}") from None
    except ray.exceptions.RayError as e:  # its worker or node died, every try
        raise RuntimeError(
            f"run {job.label} ({job.path}) failed: its worker died {sweep.retries + 1} "
            f"time(s) ({type(e).__name__}); the finished runs are saved, run the same "
            f"command again to resume the rest") from None
