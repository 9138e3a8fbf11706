"""The training loop: the textbook's ``train_ch6``, written as resumable run directories.

``train`` resolves what is trained (``bnlab.train.inputs``), takes the run directory's lock and
checks it, then ``_run`` reads top to bottom as the whole run: data, network (built, checked by
a dry batch, finished), optimizer, resumed state, then per epoch: train (``bnlab.train.epoch``),
test accuracy in eval mode (``bnlab.train.evaluate``), an atomic checkpoint, one line in
``metrics.jsonl``. A run resumed from its checkpoint finishes with the same metrics as an
uninterrupted one: the model, optimizer and RNG state are restored, each epoch's batch order
depends only on (seed, epoch) and the learning rate only on the step. A finished run resumed
with more epochs (and a constant schedule) is extended.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnlab.data import BatchLoader
from bnlab.data.custom import DatasetBatches
from bnlab.errors import CorruptFileError, RunDirError, UnavailableError, UserError
from bnlab.norm.base import is_batch_norm, tracked_batch_norms
from bnlab.norm.state import load_state_dict
from bnlab.provenance import provenance
from bnlab.train import batches
from bnlab.train.build import (
    copy_back,
    finish,
    make_model,
    make_optimizer,
    weights_before_norm,
)
from bnlab.train.config import TrainConfig
from bnlab.train.distributed import Dist, setup
from bnlab.train.dry_batch import check_labels, dry_batch
from bnlab.train.epoch import Estimate, Probe, Stepper, train_epoch
from bnlab.train.evaluate import evaluate, precise_accuracy
from bnlab.train.inputs import Inputs, resolve
from bnlab.train.run import Run, read_train_config
from bnlab.train.rundir import CHECKPOINT, CONFIG, RunDir
from bnlab.train.tensorboard_log import open_log
from bnlab.train.user_model import ModelInput

__all__ = ["Probe", "pick_device", "train"]


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``: one that exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UnavailableError(f"--device {name} was asked for but no CUDA device is "
                                   f"available; use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise UnavailableError(f"--device {name}: this machine has {count} CUDA "
                                   f"device(s), cuda:0 to cuda:{count - 1}; pick one of them")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UnavailableError(f"--device {name} was asked for but no Apple GPU (MPS) is "
                               f"available; use --device cpu or auto")
    return device


def _prepare(config: TrainConfig, rd: RunDir, resume: bool) -> dict[str, Any] | None:
    """Check the directory (main rank, under its lock); return the checkpoint to resume from.

    Writes nothing: a new run's config.json is written once its data and model are ready.
    """
    if not rd.exists():
        if rd.has_checkpoint:  # a run whose config.json is gone: never train over it
            raise CorruptFileError(rd.path / CONFIG, "missing, but the directory holds a run "
                                   "(checkpoint.pt)", "restore config.json, or move the "
                                   "directory away and train again")
        return None
    saved = read_train_config(rd)
    if not resume:
        raise FileExistsError(
            f"{rd.path} already holds a run; pass --resume to continue it, or choose "
            f"another --out")
    diff = saved.differences(config)
    if diff == [f"epochs: {saved.epochs} != {config.epochs}"] and config.epochs > saved.epochs:
        if config.schedule != "constant":  # its curve was laid over the epochs first asked
            raise RunDirError(f"cannot extend {rd.path} from {saved.epochs} to {config.epochs} "
                              f"epochs: its {config.schedule} schedule was laid over "
                              f"{saved.epochs}; train a new run with --epochs {config.epochs}")
        diff = []
    if diff:
        raise RunDirError(f"cannot resume {rd.path}: its config differs from this one ("
                          + "; ".join(diff) + "); pass the run's own flags, or choose "
                          "another --out")
    rd.remove_stale_temporaries()  # a process killed while writing left these
    return rd.load_checkpoint() if rd.has_checkpoint else None


def _check_shares(model: nn.Module, loader: BatchLoader, world: int) -> None:
    """BatchNorm in training needs two examples per batch on every rank: refuse up front."""
    if loader.smallest_share() < 2 and any(is_batch_norm(m) for m in model.modules()):
        raise UserError(
            f"a training batch would give a rank {loader.smallest_share()} example(s) "
            f"({loader.num_examples} training examples, --batch-size {loader.batch_size}, "
            f"{world} rank(s)), but BatchNorm needs at least 2 in training; use a "
            f"--batch-size of at least {2 * world} and at least {2 * world} training examples")


def _resume_state(raw: nn.Module, stepper: Stepper, checkpoint: dict[str, Any],
                  path: Path) -> None:
    """Load the checkpoint into the fresh model and optimizer (both discarded on failure)."""
    try:
        load_state_dict(raw, checkpoint["model"])  # all or nothing
        stepper.optimizer.load_state_dict(checkpoint["optimizer"])
        if stepper.scaler is not None and "scaler" in checkpoint:
            stepper.scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CorruptFileError(path, f"does not fit this run's model and optimizer "
                               f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})",
                               "restore the run's own checkpoint, or move it away and resume "
                               "(--resume) to retrain the run from its first epoch") from e


def train(config: TrainConfig, out: str | Path, *, resume: bool = False,
          log: Callable[[str], None] = print, probe: Probe | None = None,
          model: ModelInput | None = None, train_data: Any = None,
          test_data: Any = None) -> Run:
    """Train `config` into run directory `out`; with `resume`, continue an interrupted run (or
    extend a finished one to more ``config.epochs``).

    Any network and data, as the textbook's ``train_ch6(net, train_iter, test_iter, ...)``:
    `model` is an ``nn.Module``, a zero-argument factory or ``"package.module:factory"``
    (also accepted as ``config.model``); `train_data` and `test_data` are tensors ``(x, y)``,
    a ``Dataset`` or a ``DataLoader`` (``bnlab.data.custom``). config.json then describes them
    (``model_info``, ``data_info``) and resuming refuses a network or data that do not match
    (``bnlab.train.user_model``). A network is trained as given: its own initialization (unless
    ``config.init``), its lazy layers materialized by the first batch; bnlab fuses and converts
    its own copy, and an ``nn.Module`` passed in receives the trained state after every epoch,
    its object and classes untouched (``bnlab.train.build``).

    Under torchrun (or in an initialized process group) this is one rank of a data-parallel
    job: see ``bnlab.train.distributed``. With a `probe`, its measurements go to
    ``probes.jsonl`` (one line per probed step).

    One process writes `out` at a time (``RunDir.lock``: a second one gets a RunDirError).
    config.json is written once data and model are ready, and a new run that fails before its
    first checkpoint removes what it wrote: a retry needs no `resume`. Damaged files raise
    ``CorruptFileError`` (``bnlab.errors``) naming the file and the fix.
    """
    inputs = resolve(config, model, train_data, test_data)
    device = pick_device(inputs.config.device)
    ddp = setup(device, inputs.config.dist_timeout)
    try:
        return _train(inputs, RunDir(out), resume, log if ddp.main else _silent, device, ddp,
                      probe)
    except RuntimeError as e:
        if not ddp.active or isinstance(e, UserError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnavailableError(
            f"rank {ddp.rank} of {ddp.world} stopped: {first}. A connection or timeout error "
            f"here usually means another rank died or hung: check its output. The run "
            f"resumes from its last checkpoint with --resume.") from e
    finally:
        ddp.close()


def _silent(msg: str) -> None:
    pass


def _train(inputs: Inputs, rd: RunDir, resume: bool, log: Callable[[str], None],
           device: torch.device, ddp: Dist, probe: Probe | None) -> Run:
    config = inputs.config
    with ExitStack() as stack:
        checkpoint = None
        if ddp.main:  # the lock and the directory's checks; the other ranks learn the outcome
            ok = 0.0
            try:
                stack.enter_context(rd.lock())
                checkpoint = _prepare(config, rd, resume)
                ok = 1.0
            finally:
                ddp.broadcast(ok, device)
        elif not ddp.broadcast(0.0, device):
            raise UnavailableError(f"rank 0 could not start the run in {rd.path}; its output "
                                   f"says why")
        fresh = ddp.main and not rd.exists()
        try:
            return _run(inputs, rd, checkpoint, fresh, log, device, ddp, probe)
        except BaseException:
            if ddp.main and fresh and not rd.has_checkpoint:
                rd.discard()  # failed before its first checkpoint: nothing blocks a retry
            raise


def _network(inputs: Inputs, train_loader: BatchLoader, test_loader: BatchLoader,
             device: torch.device, world: int) -> nn.Module:
    """The network to train: built (bnlab's copy of a user's), on the device, checked and
    materialized by a dry batch, then initialized/converted/fused as the config says."""
    config = inputs.config
    x, y = next(iter(train_loader.batches(0)))
    raw = make_model(config, inputs.network).to(device)
    _check_shares(raw, train_loader, world)  # (a batch of one cannot even run the dry batch)
    classes = dry_batch(raw, x, y)
    for loader, what in ((train_loader, "the training data"), (test_loader, "the test data")):
        if not isinstance(loader, DatasetBatches):  # labels in memory: check them all now
            check_labels(loader.labels, classes, what)
    return finish(raw, config)


def _run(inputs: Inputs, rd: RunDir, checkpoint: dict[str, Any] | None, fresh: bool,
         log: Callable[[str], None], device: torch.device, ddp: Dist,
         probe: Probe | None) -> Run:
    """The whole run, top to bottom (main rank writes; see ``bnlab.train.distributed``)."""
    config = inputs.config
    if not ddp.main and rd.has_checkpoint:
        checkpoint = rd.load_checkpoint()
    done = len(checkpoint["metrics"]) if checkpoint is not None else 0
    if rd.done and done >= config.epochs:
        if ddp.main and checkpoint is not None:  # derived from the checkpoint: repaired here
            rd.write_metrics(checkpoint["metrics"])
        log(f"{rd.path}: already complete")
        return Run(rd.path)
    if config.amp == "fp16" and device.type != "cuda":
        raise UserError(f"--amp fp16 needs a CUDA device (this run is on {device}); use "
                        f"--amp bf16 on the CPU")
    threads = config.threads or (max(1, (os.cpu_count() or 1) // ddp.world) if ddp.active
                                 else None)
    if threads:
        torch.set_num_threads(threads)

    train_loader, test_loader = batches.loaders(config, device, log, (ddp.rank, ddp.world),
                                                inputs.train_data, inputs.test_data)
    raw = _network(inputs, train_loader, test_loader, device, ddp.world)
    model: nn.Module = raw
    if ddp.active:
        model = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None)
    stepper = Stepper.create(config, raw, model, make_optimizer(config, raw), device)
    if config.no_decay_before_norm:
        log(f"no weight decay on the weights before a norm layer: "
            f"{', '.join(weights_before_norm(raw))}")
    metrics: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    if checkpoint is not None:
        _resume_state(raw, stepper, checkpoint, rd.path / CHECKPOINT)
        metrics = list(checkpoint["metrics"])
        probes = list(checkpoint.get("probes", []))
        log(f"{rd.path}: resuming after epoch {len(metrics)}")
    if ddp.main:
        extended = not fresh and read_train_config(rd).epochs != config.epochs
        if fresh or extended:  # data and model are ready: now the directory becomes a run
            rd.reopen()  # (an extended run is not done until its new last epoch)
            rd.write_config({**config.to_dict(), "provenance": provenance(threads)})
        rd.write_metrics(metrics)  # derived from the checkpoint: drops lines written after it
        if probe is not None:
            rd.write_metrics(probes, name="probes.jsonl")
    wall = metrics[-1]["wall_time"] if metrics else 0.0
    board = open_log(rd.path, config.tensorboard and ddp.main,
                     purge_step=len(metrics) * len(train_loader))  # a no-op unless asked for
    estimate = Estimate(log, config.epochs - len(metrics))

    for epoch in range(len(metrics), config.epochs):
        t0 = time.perf_counter()
        sums = train_epoch(stepper, train_loader, epoch, ddp, probe=probe, probes=probes,
                           board=board, estimate=estimate, progress=config.progress and ddp.main)
        loss_sum, correct, seen = ddp.sum(list(sums), device)
        train_time = time.perf_counter() - t0
        test_acc = ddp.broadcast(evaluate(raw, test_loader, config.progress) if ddp.main
                                 else 0.0, device)
        precise = ({"test_acc_precise": ddp.broadcast(
            precise_accuracy(raw, train_loader, test_loader, config.precise_bn) if ddp.main
            else 0.0, device)} if config.precise_bn and tracked_batch_norms(raw) else {})
        epoch_time = time.perf_counter() - t0
        wall += epoch_time
        metrics.append({
            "epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "test_acc": test_acc, **precise, "examples_per_sec": seen / train_time,
            "epoch_time": epoch_time, "wall_time": wall,
        })
        if ddp.main:
            rd.save_checkpoint({"model": raw.state_dict(),
                                "optimizer": stepper.optimizer.state_dict(),
                                **({"scaler": stepper.scaler.state_dict()}
                                   if stepper.scaler is not None else {}),
                                "rng": torch.get_rng_state(), "metrics": metrics,
                                "probes": probes, "config": config.to_dict()})
            rd.write_metrics(metrics)
            if probe is not None:
                rd.write_metrics(probes, name="probes.jsonl")
            board.epoch(metrics[-1], raw)
        if inputs.given and inputs.network is not None:
            copy_back(raw, inputs.network, config)  # the caller's network, trained in place
        m = metrics[-1]
        log(f"epoch {m['epoch']:>2}: loss {m['train_loss']:.3f}, train acc {m['train_acc']:.3f}, "
            f"test acc {m['test_acc']:.3f}, {m['examples_per_sec']:.0f} examples/sec")
    board.close()
    if ddp.main:
        rd.mark_done({"final": metrics[-1], "device": str(device), "world_size": ddp.world,
                      "wall_time": wall, "provenance": provenance(threads)})
    ddp.barrier()
    return Run(rd.path)
