"""What a sweep is made of (``bnlab.studies.sweep``): its settings, its jobs, a run as files.

Shared by the in-process path (``sweep``) and the Ray path (``ray_sweep``), and free of Ray: a
``Sweep`` says where runs train, a ``Job`` is one (arm, seed) run and its directory on the
driver, and ``read_tree``/``write_tree`` turn a run directory into the files a Ray task sends
back and those files into the driver's run directory again (each file atomically, ``DONE``
last, so a run is complete only once all its files are there). ``train_in_tmp`` is a worker's
whole side of a run.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnlab.errors import UserError
from bnlab.files import TMP_SUFFIX, make_dirs
from bnlab.train import Run, TrainConfig, train
from bnlab.train.epoch import Probe
from bnlab.train.rundir import DONE, LOCK, atomic_write_bytes

__all__ = ["Job", "Outcome", "RunFailed", "Sweep", "read_tree", "train_here",
           "train_in_tmp", "write_tree"]

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


def _silent(msg: str) -> None:  # runs in a sweep log nothing: the sweep says it
    pass


def train_here(job: Job) -> Run:
    return train(job.config, job.path, resume=True, log=_silent,
                 probe=job.probe() if job.probe else None, **job.train_kw)


# ---- a run directory as files, both ways ----------------------------------------------------

def read_tree(path: Path) -> dict[str, bytes]:
    """Every file of a run directory (relative name -> bytes), without its lock and the
    temporaries of a killed writer."""
    files = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        temporary = p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)
        if p.is_file() and not p.is_symlink() and p.name != LOCK and not temporary:
            files[rel.as_posix()] = p.read_bytes()
    return files


def write_tree(path: Path, files: dict[str, bytes]) -> None:
    """Write a run's files into `path`, each atomically, ``DONE`` last: until ``DONE`` is
    there the run counts as unfinished, so a driver killed half-way leaves a run to redo."""
    for rel in sorted(files, key=lambda r: (r == DONE, r)):
        target = path / rel
        if not target.resolve().is_relative_to(path.resolve()) or rel.startswith("/"):
            raise UserError(f"refused a run file named {rel!r}: it would land outside {path}")
        make_dirs(target.parent, root=path)
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
            make_dirs(path)
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
