"""One training epoch: the textbook's inner loop, with what a practitioner's run adds.

Per step: the learning rate of the schedule (``bnlab.train.build.set_lr``), the forward pass
(under autocast when ``amp`` is set: bf16, or fp16 with a gradient scaler; BatchNorm itself
computes in float32 and the loss is taken in float32), the labels checked against the outputs,
the backward of the global batch's mean loss, the probe if one is due, the optimizer step.
Running loss and accuracy are summed over the epoch as the textbook prints them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from bnlab.data import BatchLoader
from bnlab.train.build import set_lr
from bnlab.train.config import TrainConfig
from bnlab.train.distributed import Dist
from bnlab.train.dry_batch import FORWARD, check_labels
from bnlab.train.progress import Progress
from bnlab.user_code import user_code

__all__ = ["Estimate", "Probe", "Stepper", "train_epoch"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Probe(Protocol):
    """A measurement taken every `every` steps, after backward and before the optimizer step.

    It receives the unwrapped model (with the step's gradients in ``.grad``) and the step's
    batch, returns a dict of numbers, and must leave the model, its gradients and the global
    RNG exactly as it found them (so a probed run trains like an unprobed one).
    """

    every: int

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        ...


@dataclass
class Stepper:
    """What every step uses: the model (``raw`` unwrapped, ``model`` perhaps DDP), optimizer,
    autocast and gradient scaler, loss."""

    config: TrainConfig
    raw: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    scaler: Any = None  # torch.amp.GradScaler for fp16
    loss_fn: nn.Module = field(default_factory=lambda: nn.CrossEntropyLoss(reduction="sum"))

    @classmethod
    def create(cls, config: TrainConfig, raw: nn.Module, model: nn.Module,
               optimizer: torch.optim.Optimizer, device: torch.device) -> Stepper:
        scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
        return cls(config, raw, model, optimizer, device, scaler)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.config.amp])


class Estimate:
    """The time a run will take, from its first steps: one line, once, before a long run goes
    on (``about 55 min an epoch on this machine``)."""

    AFTER_SECONDS = 2.0  # time the first steps for this long (or 5 steps) ...
    WORTH_SAYING = 60.0  # ... and speak if the run's rest takes longer than this

    def __init__(self, log: Callable[[str], None], epochs_left: int) -> None:
        self.log, self.epochs_left, self.done = log, epochs_left, False

    def step(self, i: int, elapsed: float, steps: int) -> None:
        if self.done or (elapsed < self.AFTER_SECONDS and i < 5):
            return
        self.done = True
        per_epoch = elapsed / (i + 1) * steps
        total = per_epoch * self.epochs_left
        if total >= self.WORTH_SAYING:
            self.log(f"estimate: about {_duration(per_epoch)} an epoch on this machine "
                     f"({elapsed / (i + 1):.2f} s a step, {steps} steps); "
                     f"{self.epochs_left} epoch(s): about {_duration(total)}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def train_epoch(s: Stepper, loader: BatchLoader, epoch: int, ddp: Dist, *,
                probe: Probe | None, probes: list[dict[str, Any]], board: Any,
                estimate: Estimate | None, progress: bool) -> tuple[float, float, float]:
    """Train one epoch; returns (summed loss, correct, examples) over this rank's shares."""
    s.model.train()
    config, steps = s.config, len(loader)
    loss_sum = correct = seen = 0.0
    t0 = time.perf_counter()
    bar = Progress(steps, f"epoch {epoch + 1}/{config.epochs}", progress)
    for i, (x, y) in enumerate(loader.batches(epoch)):
        step = epoch * steps + i
        set_lr(s.optimizer, config, step, steps)
        s.optimizer.zero_grad(set_to_none=True)
        with user_code(FORWARD), s.autocast():
            logits = s.model(x)
        check_labels(y, logits.shape[1], f"batch {i + 1} of epoch {epoch + 1}")
        total = s.loss_fn(logits.float(), y)
        # The global batch's mean loss; DDP averages gradients over ranks, hence * world.
        scaled = total * (ddp.world / loader.global_batch_size(i))
        (s.scaler.scale(scaled) if s.scaler is not None else scaled).backward()
        if probe is not None and step % probe.every == 0:
            probes.append({"step": step, "epoch": epoch + 1, **probe(s.raw, x, y)})
        if s.scaler is not None:
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            s.optimizer.step()
        with torch.no_grad():
            loss_sum += float(total)
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += y.shape[0]
        board.step(step, total.detach() / y.shape[0], s.optimizer)
        bar.update(i + 1, loss=loss_sum / max(seen, 1), acc=correct / max(seen, 1))
        if estimate is not None:
            estimate.step(i, time.perf_counter() - t0, steps)
    bar.close()
    return loss_sum, correct, seen
