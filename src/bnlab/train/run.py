"""A finished (or interrupted) run, read back from its directory: the notebook-facing object."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from bnlab.norm.state import load_state_dict
from bnlab.train.config import TrainConfig
from bnlab.train.rundir import RunDir

__all__ = ["Run"]


class Run:
    """``Run(path)``: config, per-epoch metrics, final metrics and the trained model."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.dir = RunDir(path)
        if not self.dir.exists():
            raise FileNotFoundError(f"{path} is not a bnlab run directory (no config.json)")

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.dir.read_config())

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return self.dir.read_metrics()

    @property
    def probes(self) -> list[dict[str, Any]]:
        """Per-step probe measurements (``probes.jsonl``), if the run was probed."""
        return self.dir.read_metrics("probes.jsonl")

    @property
    def final(self) -> dict[str, Any]:
        rows = self.metrics
        if not rows:
            raise ValueError(f"{self.path}: no epoch has finished yet")
        return rows[-1]

    @property
    def done(self) -> bool:
        return self.dir.done

    def model(self) -> nn.Module:
        """The model as of the last checkpoint, in eval mode, on the CPU."""
        from bnlab.train.loop import make_model

        model = make_model(self.config)
        load_state_dict(model, self.dir.load_checkpoint()["model"])  # all or nothing
        return model.eval()

    def __repr__(self) -> str:
        state = "done" if self.done else f"{len(self.metrics)} epochs"
        return f"Run({str(self.path)!r}, {state})"
