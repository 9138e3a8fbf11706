"""Optional TensorBoard event files for a run (``bnlab train --tensorboard``).

Written into ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR`` shows them):

* per step: ``step/loss`` (the batch's mean loss) and ``step/lr`` (the first param group's);
* per epoch: ``epoch/<key>`` for every number of the epoch's metrics row (train loss and
  accuracy, test accuracy, examples/sec, times);
* per epoch, for every BatchNorm-style layer: histograms ``bn/<layer>/weight``, ``/bias``,
  ``/running_mean`` and ``/running_var``: how far the statistics drift is the question the
  textbook leaves open.

The run directory's ``metrics.jsonl`` stays the contract for reports; these files are for
looking. A resumed run purges the events after its last checkpoint (TensorBoard's
``purge_step``), so the curves show each step once. tensorboard is imported only when asked
for; ``NoLog`` stands in otherwise, so the training loop calls the same three methods always.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnlab.errors import UnavailableError
from bnlab.files import make_dirs

__all__ = ["DIRECTORY", "NoLog", "TensorBoardLog", "open_log"]

DIRECTORY = "tensorboard"  # inside the run directory


class NoLog:
    """What the loop holds when TensorBoard is off: every call does nothing."""

    def step(self, step: int, loss: torch.Tensor | float,
             optimizer: torch.optim.Optimizer) -> None:
        pass

    def epoch(self, row: dict[str, Any], model: nn.Module) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLog(NoLog):
    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch's module needs the tensorboard package
            raise UnavailableError(f"--tensorboard needs the tensorboard package ({e}); "
                                   f"pip install tensorboard, or train without "
                                   f"--tensorboard") from e
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def step(self, step: int, loss: torch.Tensor | float,
             optimizer: torch.optim.Optimizer) -> None:
        # `loss` may be a tensor: read (and, on CUDA, synchronized) only when logging is on
        self.writer.add_scalar("step/loss", float(loss), step)
        self.writer.add_scalar("step/lr", float(optimizer.param_groups[0]["lr"]), step)

    def epoch(self, row: dict[str, Any], model: nn.Module) -> None:
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        for name, layer in bn_layers(model):
            for part in ("weight", "bias", "running_mean", "running_var"):
                value = getattr(layer, part, None)
                # A histogram of NaNs makes TensorBoard fail: a diverged run shows none.
                if isinstance(value, torch.Tensor) and bool(torch.isfinite(value).all()):
                    self.writer.add_histogram(f"bn/{name}/{part}", value.detach().float().cpu(),
                                              epoch)
        self.writer.flush()  # an epoch is the unit a crash may lose, as with the checkpoint

    def close(self) -> None:
        self.writer.close()


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every layer with running statistics (BatchNorm, fused BN layers)."""
    return [(name or "model", m) for name, m in model.named_modules()
            if isinstance(getattr(m, "running_mean", None), torch.Tensor)]


def open_log(run_dir: str | Path, enabled: bool, purge_step: int | None = None) -> NoLog:
    """A TensorBoardLog writing into ``run_dir/tensorboard`` if `enabled`, else a NoLog."""
    if not enabled:
        return NoLog()
    # The writer creates its files inside; the directory itself is made (or checked) here, so
    # a link planted at ``tensorboard`` is refused, not written through.
    make_dirs(Path(run_dir) / DIRECTORY, root=run_dir)
    return TensorBoardLog(Path(run_dir) / DIRECTORY, purge_step=purge_step or None)
