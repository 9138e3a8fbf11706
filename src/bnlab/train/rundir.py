"""A run directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` and a ``DONE`` marker.

Every file that matters is written atomically (a temporary file in the same directory, fsync,
``os.replace``, fsync of the directory): a crash at any instant leaves either the old or the new
version, never a torn one. The checkpoint is the source of truth; ``metrics.jsonl`` is derived
from it and rewritten from it on resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["RunDir", "atomic_write_bytes"]

CONFIG, METRICS, CHECKPOINT, DONE = "config.json", "metrics.jsonl", "checkpoint.pt", "DONE"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(file)` on a temporary sibling, then atomically rename it to `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


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
        """Delete temporary files a killed writer left behind (``.NAME.tmp-PID``)."""
        stale = sorted(self.path.glob(".*.tmp-*")) if self.path.is_dir() else []
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    # ---- config ----
    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path / CONFIG, json.dumps(config, indent=2).encode() + b"\n")

    def read_config(self) -> dict[str, Any]:
        return json.loads((self.path / CONFIG).read_text())

    # ---- metrics ----
    def write_metrics(self, rows: list[dict[str, Any]], name: str = METRICS) -> None:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_bytes(self.path / name, text.encode())

    def read_metrics(self, name: str = METRICS) -> list[dict[str, Any]]:
        p = self.path / name
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

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
        return torch.load(self.path / CHECKPOINT, map_location=map_location, weights_only=True)

    # ---- completion ----
    def read_done(self) -> dict[str, Any] | None:
        p = self.path / DONE
        return json.loads(p.read_text()) if p.exists() else None

    def mark_done(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.path / DONE, json.dumps(summary, indent=2).encode() + b"\n")
