"""Evaluation: test accuracy (and loss) in eval mode, with the running averages or with
BatchNorm statistics re-estimated by PreciseBN; and ``evaluate_run``, the twin of
``bnlab evaluate RUN``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnlab.data import BatchLoader
from bnlab.errors import UserError
from bnlab.norm.base import tracked_batch_norms
from bnlab.norm.precise import precise_bn
from bnlab.settings import like, setting, validate
from bnlab.train.config import TrainConfig
from bnlab.train.dry_batch import FORWARD, check_labels
from bnlab.train.progress import Progress
from bnlab.train.user_model import is_import_path
from bnlab.user_code import user_code

__all__ = ["PRECISE_EPOCH", "EvaluateOptions", "Evaluation", "evaluate", "evaluate_loss",
           "evaluate_run",
           "precise_accuracy"]

# The epoch whose batch order PreciseBN re-estimation uses: one no run reaches.
PRECISE_EPOCH = 1_000_000


def evaluate(model: nn.Module, loader: BatchLoader, progress: bool = False) -> float:
    """Accuracy in eval mode (running statistics), restoring the model's previous mode."""
    return evaluate_loss(model, loader, progress)[0]


@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: BatchLoader,
                  progress: bool = False) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) in eval mode, restoring the model's mode."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loss = 0.0
    bar = Progress(len(loader), "evaluate", progress)
    try:
        for i, (x, y) in enumerate(loader.batches(0)):
            with user_code(FORWARD, always=f"on test inputs of shape {tuple(x.shape)}"):
                logits = model(x)
            check_labels(y, logits.shape[1], f"batch {i + 1} of the test data")
            correct += int((logits.argmax(dim=1) == y).sum())
            loss += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
            total += y.shape[0]
            bar.update(i + 1)
    finally:
        bar.close()
        model.train(was_training)
    return correct / max(total, 1), loss / max(total, 1)


@torch.no_grad()
def _precise_copy(model: nn.Module, train: BatchLoader, examples: int) -> nn.Module:
    """A copy of `model` whose BatchNorm statistics PreciseBN re-estimated over `examples`
    training examples (the batches of a fixed, unused epoch); the global RNG is kept.

    A diverged network (non-finite weights, or statistics that are not finite) has nothing to
    re-estimate: the copy keeps the statistics it has, as the studies' failure rule counts it
    (``bnlab.studies.stats``), never an error that ends the run.
    """
    copy = deepcopy(model)
    if all(bool(torch.isfinite(p).all()) for p in copy.parameters()):
        rng = torch.get_rng_state()
        try:
            precise_bn(copy, train.batches(PRECISE_EPOCH), examples)
        except ValueError as e:  # precise_bn changed nothing: the copy keeps its statistics
            if "not finite" not in str(e):
                raise
        finally:
            torch.set_rng_state(rng)
    return copy


def precise_accuracy(model: nn.Module, train: BatchLoader, test: BatchLoader,
                     examples: int) -> float:
    """Test accuracy with BatchNorm statistics re-estimated by PreciseBN over `examples`
    training examples: the accuracy the weights deserve, free of the running averages' lag.
    The model, its buffers and the global RNG are left as they were."""
    return evaluate(_precise_copy(model, train, examples), test)


def _check_factory(path: str) -> str | None:
    return None if is_import_path(path) else "must be package.module:factory"


@dataclass(frozen=True)
class EvaluateOptions:
    """One ``bnlab evaluate`` command; its flags are generated from these declarations
    (``bnlab.settings``), the shared ones stated once in ``TrainConfig``."""

    run: str = setting("", "a run directory (bnlab train)", positional=True,
                       metavar="RUN_DIR")
    precise_bn: int = like(TrainConfig, "precise_bn", help="also evaluate with BatchNorm "
                           "statistics re-estimated over N training examples (PreciseBN; 0: "
                           "off)")
    dataset: str | None = like(TrainConfig, "dataset", None, help="evaluate on this dataset "
                               "instead (the same image shape; package.module:factory for "
                               "your own data)", unset="the run's")
    data_dir: str | None = like(TrainConfig, "data_dir")
    model: str | None = setting(None, "the factory of a run of your own network, "
                                "package.module:factory (bnlab does not import code that a "
                                "run directory names)", metavar="MODULE:FACTORY",
                                check=_check_factory, unset="none: bnlab's own models")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class Evaluation:
    """What ``bnlab evaluate`` reports for one run's checkpoint."""

    run: str
    epochs: int
    dataset: str
    examples: int
    test_acc: float
    test_loss: float
    precise_bn: int = 0  # examples PreciseBN re-estimated over (0: not asked)
    test_acc_precise: float = math.nan
    test_loss_precise: float = math.nan

    def lines(self) -> list[str]:
        out = [f"{self.run}: after epoch {self.epochs}, {self.examples} test examples of "
               f"{self.dataset}",
               f"  running averages:  test acc {self.test_acc:.4f}, test loss "
               f"{self.test_loss:.4f}"]
        if self.precise_bn:
            out.append(f"  PreciseBN ({self.precise_bn} examples): test acc "
                       f"{self.test_acc_precise:.4f}, test loss {self.test_loss_precise:.4f}")
        return out


def evaluate_run(path: str | Path, *, precise_bn: int = 0, dataset: str | None = None,
                 data_dir: str | None = None, model: Any = None,
                 log: Callable[[str], None] = print) -> Evaluation:
    """Test accuracy and loss of the run's last checkpoint: with its running averages, and
    with PreciseBN statistics over `precise_bn` training examples when asked (the checkpoint
    is not changed). `dataset`/`data_dir` evaluate on other data of the same shape; `model`
    is the factory of a run of your own network (``Run.model``)."""
    from bnlab.train.batches import loaders
    from bnlab.train.run import Run

    run = Run(path)
    config = run.config
    if precise_bn < 0 or precise_bn == 1:
        raise UserError(f"--precise-bn {precise_bn}: give 0 (off) or a number of examples >= 2")
    if config.data_info is not None and dataset is None:
        raise UserError(f"{run.path} trained on your own data ({config.dataset}); pass "
                        f"--dataset (a bnlab dataset or package.module:factory) to evaluate")
    if model is not None and config.model_info is None:
        raise UserError(f"--model names the factory of a run of your own network; {run.path} "
                        f"trained bnlab's {config.model}: leave --model out")
    net = run.model(model)
    if precise_bn and not tracked_batch_norms(net):
        raise UserError(f"--precise-bn: {run.path}'s model has no BatchNorm layer with running "
                        f"statistics to re-estimate; leave it out")
    # The run's own batch size, limits and standardization (its mean and std come from its
    # training examples); only the data may change.
    changes: dict[str, Any] = {"data_dir": data_dir, "device": "cpu", "augment": False}
    train_data = test_data = None
    if dataset is not None:
        from bnlab.train.inputs import load_data

        train_data, test_data = load_data(dataset) if is_import_path(dataset) else (None, None)
        if train_data is None:
            changes["dataset"] = dataset
    try:
        config = replace(config, **changes)
    except ValueError as e:  # another dataset's images, say, that the run's model cannot read
        raise UserError(f"cannot evaluate {run.path} on {dataset}: {e}") from e
    train, test = loaders(config, torch.device("cpu"), log, (0, 1), train_data, test_data)
    acc, loss = evaluate_loss(net, test)
    out = Evaluation(str(run.path), len(run.metrics), dataset or config.dataset,
                     test.num_examples, acc, loss)
    if precise_bn:
        p_acc, p_loss = evaluate_loss(_precise_copy(net, train, precise_bn), test)
        out = replace(out, precise_bn=precise_bn, test_acc_precise=p_acc,
                      test_loss_precise=p_loss)
    return out
