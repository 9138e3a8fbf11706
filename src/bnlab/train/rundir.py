"""A run directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` and a ``DONE`` marker.

Every file that matters is written atomically (a temporary file in the same directory, fsync,
``os.replace``, fsync of the directory): a crash at any instant leaves either the old or the new
version, never a torn one. The checkpoint is the source of truth; ``metrics.jsonl`` is derived
from it and rewritten from it on resume.

Every file is read back through ``bnlab.files`` and checked for the shape the trainer relies
on, so a damaged or hostile file is a ``CorruptFileError`` naming it and the fix, never a
crash half-way through. One process writes at a time: ``lock()`` (an ``flock`` on ``.lock``,
which the kernel drops when its holder ends, however it ends) refuses a second writer.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from bnlab import files
from bnlab.errors import CorruptFileError, RunDirError
from bnlab.files import load_checkpoint, read_json, read_jsonl

__all__ = ["METRIC_KEYS", "RunDir", "atomic_write_bytes"]

CONFIG, METRICS, CHECKPOINT, DONE = "config.json", "metrics.jsonl", "checkpoint.pt", "DONE"
LOCK = ".lock"
# Every name a run writes: none may be a link (checked under the lock, before anything is read).
NAMES = (CONFIG, METRICS, CHECKPOINT, DONE, "probes.jsonl", "tensorboard")
# Every metrics row (metrics.jsonl and the checkpoint's copy) holds these numbers.
METRIC_KEYS = ("epoch", "train_loss", "train_acc", "test_acc", "examples_per_sec",
               "epoch_time", "wall_time")


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(file)` on an unpredictable temporary beside `path`, then rename it to `path`
    (``bnlab.files.atomic_write``: refused if the run directory or the name is a link)."""
    files.atomic_write(path, write, root=path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    files.write_bytes(path, data, root=path.parent)


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind `e` (torch's zip writer reports a full disk as a RuntimeError)."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # ---- presence ----
    @property
    def done(self) -> bool:
        return (self.path / DONE).exists()

    @property
    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).exists()

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def exists(self) -> bool:
        return (self.path / CONFIG).exists()

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary files a killed writer left behind (``.NAME.*.tmp``)."""
        return files.remove_stale_temporaries(self.path)

    # ---- one writer at a time ----
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the writer lock for the duration: a second ``train``/``--resume`` is refused.

        Creates the directory if need be, and removes it again on release if it was created
        here and is still empty (a start that failed leaves nothing behind). The lock file
        holds the holder's pid; a lock file left by a killed process holds no lock any more
        and is simply taken over.
        """
        created = bool(files.make_dirs(self.path))
        fd = None
        try:
            fd = _acquire(self.path / LOCK, self.path)
            for name in NAMES:  # a link at any name the run writes: refused before any read
                files.check_no_links(self.path / name, self.path)
        except BaseException:
            if fd is not None:
                files.remove(self.path / LOCK)
                os.close(fd)
            if created:
                with suppress(OSError):
                    self.path.rmdir()
            raise
        try:
            yield
        finally:  # unlinked before the lock is dropped; plain os calls, so that a Ctrl-C
            # arriving as the holder lets go cannot stop between them
            with suppress(FileNotFoundError):
                os.unlink(self.path / LOCK)
            os.close(fd)
            if created:
                with suppress(OSError):  # not empty: the run is there
                    self.path.rmdir()

    def discard(self) -> None:
        """Remove what a fresh run wrote before its first checkpoint (it failed to start)."""
        for name in (CONFIG, METRICS, "probes.jsonl"):
            files.remove(self.path / name)
        with suppress(OSError):  # --tensorboard events (a link there is left, and not followed)
            files.remove_tree(self.path / "tensorboard", root=self.path)

    # ---- config ----
    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_bytes(self.path / CONFIG, json.dumps(config, indent=2).encode() + b"\n")

    def read_config(self) -> dict[str, Any]:
        return read_json(self.path / CONFIG, _fix(CONFIG))

    # ---- metrics ----
    def write_metrics(self, rows: list[dict[str, Any]], name: str = METRICS) -> None:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_bytes(self.path / name, text.encode())

    def read_metrics(self, name: str = METRICS) -> list[dict[str, Any]]:
        """The rows of `name` (``metrics.jsonl``: checked to hold every METRIC_KEYS number)."""
        p = self.path / name
        if not p.exists():
            return []
        rows = read_jsonl(p, _fix(name))
        for number, row in enumerate(rows, 1):
            problem = _bad_row(row) if name == METRICS else _bad_numbers(row)
            if problem:
                raise CorruptFileError(p, f"line {number}: {problem}", _fix(name))
        return rows

    # ---- checkpoint ----
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write the checkpoint atomically; a failure leaves the previous one untouched."""
        try:
            atomic_write(self.path / CHECKPOINT, lambda f: torch.save(state, f))
        except (OSError, RuntimeError) as e:
            cause = _os_error(e)
            if cause is None:
                raise
            kept = "the previous checkpoint is intact" if self.has_checkpoint else \
                "no checkpoint was written yet"
            raise OSError(cause.errno, f"could not write {self.path / CHECKPOINT}: "
                          f"{cause.strerror or cause}; {kept}") from e

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The checkpoint, loaded as weights only and checked to hold what resuming needs."""
        path = self.path / CHECKPOINT
        state = load_checkpoint(path, _fix(CHECKPOINT), map_location)
        epochs = self.read_config().get("epochs") if self.exists() else None
        problem = _bad_checkpoint(state, epochs if _is_number(epochs) else None)
        if problem:
            raise CorruptFileError(path, problem, _fix(CHECKPOINT))
        return state

    # ---- completion ----
    def read_done(self) -> dict[str, Any] | None:
        p = self.path / DONE
        if not os.path.lexists(p):
            return None
        done = read_json(p, _fix(DONE))
        if "wall_time" in done and not _is_real(done["wall_time"]):
            raise CorruptFileError(p, f"'wall_time' is {_short(done['wall_time'])}, not a "
                                   f"finite number of seconds", _fix(DONE))
        return done

    def reopen(self) -> None:
        """Remove the completion marker: a finished run being extended to more epochs."""
        files.remove(self.path / DONE)

    def mark_done(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.path / DONE, json.dumps(summary, indent=2).encode() + b"\n")


def _fix(name: str) -> str:
    """How to repair a damaged file of a run directory."""
    return {
        CONFIG: "the run's settings are lost: restore the file, or move the directory away and "
                "train again",
        METRICS: "it is rewritten from checkpoint.pt when the run is resumed (bnlab train "
                 "--resume with the run's flags, or the same reproduce/study command again)",
        CHECKPOINT: "restore a good copy, or move it away and resume (--resume) to retrain the "
                    "run from its first epoch",
        DONE: "delete it and resume the run (--resume) to write it again",
    }.get(name, "delete it and resume the run (--resume) to write it again")


def _acquire(lock: Path, directory: Path) -> int:
    """An fd holding an exclusive flock on `lock` (the file holds our pid), or RunDirError."""
    for _ in range(10):
        fd = files.open_in_place(lock, root=directory)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(
                f"{directory} is in use: another bnlab process (pid {holder}) is training into "
                f"it; wait for it to finish or stop it, then run again") from None
        try:  # the holder may have released (unlinked) it between our open and our flock
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)
    raise RunDirError(f"{directory}: could not take {LOCK} (other processes keep taking it); "
                      f"run again when they are done")


# Integers beyond float64's exact range are no count, epoch or time bnlab wrote (a 400-digit
# one would overflow float() where it is used): refused when the file is read.
MAX_INT = 2**53


def _is_number(v: Any) -> bool:
    return (isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool)
            and abs(v) <= MAX_INT))


def _is_real(v: Any, low: float = 0.0) -> bool:
    """A finite number >= `low` (a hyperparameter, a wall time)."""
    return _is_number(v) and math.isfinite(v) and v >= low


def _bad_numbers(row: dict[str, Any]) -> str | None:
    bad = [k for k, v in row.items() if not (_is_number(v) or v is None)]
    return f"{bad[0]!r} is not a number" if bad else None


def _bad_row(row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"a {type(row).__name__}, not a metrics row"
    missing = [k for k in METRIC_KEYS if k not in row]
    if missing:
        return f"no {missing[0]!r} value"
    bad = [k for k in METRIC_KEYS if not _is_number(row[k])]
    if bad:
        return f"{bad[0]!r} is {_short(row[bad[0]])}, not a number in range"
    if not isinstance(row["epoch"], int) or row["epoch"] < 1:
        return f"'epoch' is {_short(row['epoch'])}, not an epoch number (1, 2, ...)"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _bad_optimizer(state: Any) -> str | None:
    """What is wrong with an optimizer state dict's hyperparameters, or None."""
    groups = state.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        return "its optimizer state has no list of parameter groups"
    for number, group in enumerate(groups, 1):
        for key in ("lr", "momentum", "dampening", "weight_decay", "eps"):
            if key in group and not _is_real(group[key]):
                return (f"optimizer parameter group {number}: {key!r} is "
                        f"{_short(group[key])}, not a finite number >= 0")
        betas = group.get("betas", ())
        if not isinstance(betas, (list, tuple)) or not all(_is_real(b) for b in betas):
            return f"optimizer parameter group {number}: 'betas' are not finite numbers"
    return None


def _bad_checkpoint(state: Any, epochs: int | None = None) -> str | None:
    """What is wrong with a loaded checkpoint's structure, or None."""
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a bnlab checkpoint"
    missing = [k for k in ("model", "optimizer", "rng", "metrics") if k not in state]
    if missing:
        return f"not a bnlab checkpoint (no {missing[0]!r} entry)"
    model = state["model"]
    if not isinstance(model, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        return "its 'model' entry is not a state dict of tensors"
    if not isinstance(state["optimizer"], dict):
        return "its 'optimizer' entry is not an optimizer state dict"
    problem = _bad_optimizer(state["optimizer"])
    if problem:
        return problem
    rng = state["rng"]
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.dim() != 1:
        return "its 'rng' entry is not a random-generator state"
    metrics = state["metrics"]
    if not isinstance(metrics, list):
        return "its 'metrics' entry is not a list"
    for number, row in enumerate(metrics, 1):
        problem = _bad_row(row)
        if problem:
            return f"metrics row {number}: {problem}"
        if row["epoch"] != number:
            return f"metrics row {number} is for epoch {row['epoch']}, not {number}"
    if epochs is not None and len(metrics) > epochs:
        return (f"it holds {len(metrics)} metrics rows but the run's config.json asks for "
                f"{epochs} epochs")
    probes = state.get("probes", [])
    if not isinstance(probes, list) or not all(isinstance(p, dict) for p in probes):
        return "its 'probes' entry is not a list of rows"
    return None
