"""A finished (or interrupted) run, read back from its directory: the notebook-facing object."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn
from torch.nn.parameter import is_lazy

from bnlab.errors import CorruptFileError, RunDirError, one_line
from bnlab.models import MODELS
from bnlab.norm.state import load_state_dict
from bnlab.train.config import TrainConfig
from bnlab.train.rundir import CHECKPOINT, CONFIG, METRICS, RunDir
from bnlab.train.user_model import ModelInput

__all__ = ["Run", "read_train_config"]


def read_train_config(rd: RunDir) -> TrainConfig:
    """The run's ``config.json`` as a validated TrainConfig (CorruptFileError otherwise)."""
    data = rd.read_config()
    try:
        return TrainConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise CorruptFileError(rd.path / CONFIG, f"not a valid run config ({e})",
                               "restore the file, or move the directory away and train "
                               "again") from e


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
        return read_train_config(self.dir)

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
        if not rows and self.done:
            raise CorruptFileError(self.path / METRICS, "no epoch recorded in a finished run",
                                   "resume the run (--resume, or the same study or reproduce "
                                   "command again) to rewrite it from checkpoint.pt")
        if not rows:
            raise RunDirError(f"{self.path}: no epoch has finished yet; finish the run "
                              f"(--resume) first")
        return rows[-1]

    @property
    def done(self) -> bool:
        return self.dir.done

    def model(self, factory: ModelInput | None = None) -> nn.Module:
        """The model as of the last checkpoint, in eval mode, on the CPU.

        A run of your own network needs its `factory` (a function, ``"package.module:attr"``
        or an instance to load into): the checkpoint's weights then load into a fresh one.

        Built plain (unfused, and with BatchNorm in place of SyncBatchNorm): the trainer's
        fused and synchronized layers compute the same function with the same state-dict
        keys, so the weights load as they are. The run's BatchNorm settings (``bn_eps``,
        ``bn_momentum``) are the layers' again.
        """
        from bnlab.train.build import apply_settings, make_model, norm_settings

        config = self.config
        if config.model in MODELS:
            model = make_model(config)
            what = "the model in config.json"
        else:  # the user's network, from its import path (bnlab.train.inputs)
            from bnlab.train.inputs import build_user_model

            model = build_user_model(config, factory)
            apply_settings(model, norm_settings(config))
            what = (f"the network that {factory if isinstance(factory, str) else 'the factory'}"
                    f" builds (is it the run's, {config.model}?)")
        try:
            if any(is_lazy(t) for t in (*model.parameters(), *model.buffers())):
                model.load_state_dict(self.state_dict())  # a fresh model: the state's shapes
                # materialize its lazy layers (no snapshot to keep: it is discarded on error)
            else:
                load_state_dict(model, self.state_dict())  # all or nothing
        except (RuntimeError, TypeError, ValueError) as e:  # sizes or keys of another model
            raise CorruptFileError(self.path / CHECKPOINT, f"does not fit {what} "
                                   f"({one_line(str(e))[:300]})", "pass the run's own factory, "
                                   "or restore the run's own checkpoint") from e
        return model.eval()

    def state_dict(self) -> dict[str, Any]:
        """The model's weights and buffers as of the last checkpoint (on the CPU)."""
        return self.dir.load_checkpoint()["model"]

    def __repr__(self) -> str:
        state = "done" if self.done else f"{len(self.metrics)} epochs"
        return f"Run({str(self.path)!r}, {state})"
