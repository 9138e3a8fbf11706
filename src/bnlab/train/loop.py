"""The training loop: the textbook's ``train_ch6``, written as resumable run directories.

Per epoch: train in train mode (running loss and accuracy over the epoch, as the textbook
prints them), then test accuracy in eval mode, examples/sec and wall time; then an atomic
checkpoint, then one line in ``metrics.jsonl``. A run resumed from its checkpoint finishes with
the same metrics as an uninterrupted one: the model, optimizer and RNG state are restored and
each epoch's batch order depends only on (seed, epoch).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from copy import deepcopy
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from bnlab.data import BatchLoader, load_split
from bnlab.data.custom import batches_of
from bnlab.errors import CorruptFileError, RunDirError, UnavailableError, UserError
from bnlab.models import build_model
from bnlab.norm.base import tracked_batch_norms
from bnlab.norm.convert import convert
from bnlab.norm.fused import fuse
from bnlab.norm.precise import precise_bn
from bnlab.norm.state import load_state_dict
from bnlab.provenance import provenance
from bnlab.train.config import TrainConfig, gaussian_std
from bnlab.train.distributed import Dist, setup
from bnlab.train.inputs import Inputs, resolve
from bnlab.train.progress import Progress
from bnlab.train.run import Run, read_train_config
from bnlab.train.rundir import CHECKPOINT, CONFIG, RunDir
from bnlab.train.tensorboard_log import open_log
from bnlab.train.user_model import ModelInput

__all__ = ["Probe", "evaluate", "make_model", "pick_device", "precise_accuracy", "train"]


# Evaluation batch: eval mode is per-example, so this only sets speed. On the 2-core CPU, 256
# LeNet-BN test images at a time take 115 ms per 10k, 1000 at a time 268 ms (the activations of
# a bigger batch leave the L2 cache).
EVAL_BATCH = 256
# The epoch whose batch order PreciseBN re-estimation uses: one no run reaches.
PRECISE_EPOCH = 1_000_000


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UnavailableError("device='cuda' was asked for but no CUDA device is available; "
                               "use --device cpu or auto")
    return torch.device(name)


def make_model(config: TrainConfig, network: nn.Module | None = None) -> nn.Module:
    """Build the model with the seed's initialization (Xavier-uniform on conv/linear weights).

    `network`: the user's, built already; it is initialized as bnlab's models are (the
    textbook's ``train_ch6`` applies Xavier to any net too; ``init="default"`` keeps its own).
    ``init="gaussian-STD"``: weights ~ N(0, STD^2), biases 0.

    With ``config.fuse``, BatchNorm -> sigmoid (-> avg pool) and BatchNorm -> ReLU runs become
    single fused layers: the same function and state-dict keys, fewer passes where bnlab's
    kernels serve them.
    """
    torch.manual_seed(config.seed)
    model = build_model(config.model, config.norm) if network is None else network
    std = gaussian_std(config.init)
    for m in model.modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        if config.init == "xavier":
            nn.init.xavier_uniform_(m.weight)
        elif std is not None:  # Ioffe & Szegedy's small Gaussian weights
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if config.bn_momentum is not None:
        for bn in tracked_batch_norms(model):
            bn.momentum = config.bn_momentum
    if config.sync_bn:  # plain BatchNorm when run as a single process
        model = convert(model, to="sync", inplace=True)
    if config.fuse:
        model = fuse(model, inplace=True)
    return model


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr,
                                weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


@torch.no_grad()
def precise_accuracy(model: nn.Module, train: BatchLoader, test: BatchLoader,
                     examples: int) -> float:
    """Test accuracy of a copy of `model` whose BatchNorm statistics are re-estimated by
    PreciseBN over `examples` training examples (``bnlab.norm.precise``): the accuracy the
    weights deserve, free of the running averages' lag. The model, its buffers and the global
    RNG are left as they were; the batches are those of a fixed, unused epoch.

    A diverged network (non-finite weights, or statistics that are not finite) has nothing to
    re-estimate: its accuracy is what it gives with the statistics it has, as the studies'
    failure rule counts it (``bnlab.studies.stats``), never an error that ends the run.
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
    return evaluate(copy, test)


def evaluate(model: nn.Module, loader: BatchLoader, progress: bool = False) -> float:
    """Accuracy in eval mode (running statistics), restoring the model's previous mode."""
    was_training = model.training
    model.eval()
    correct = total = 0
    bar = Progress(len(loader), "evaluate", progress)
    for i, (x, y) in enumerate(loader.batches(0)):
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += y.shape[0]
        bar.update(i + 1)
    bar.close()
    model.train(was_training)
    return correct / max(total, 1)


def _loaders(config: TrainConfig, device: torch.device, log: Callable[[str], None],
             part: tuple[int, int], inputs: Inputs) -> tuple[BatchLoader, BatchLoader]:
    if inputs.train_data is not None:  # the user's data, in bnlab's order (bnlab.data.custom)
        return (batches_of(inputs.train_data, config.batch_size, limit=config.limit_train,
                           what="train_data", shuffle=True, seed=config.seed,
                           drop_last=config.drop_last, part=part, device=device),
                batches_of(inputs.test_data, EVAL_BATCH, limit=config.limit_test,
                           what="test_data", shuffle=False, device=device))
    train = load_split(config.dataset, "train", config.data_dir, log=log)
    test = load_split(config.dataset, "test", config.data_dir, log=log)
    tr_x, tr_y = train.images[: config.limit_train], train.labels[: config.limit_train]
    te_x, te_y = test.images[: config.limit_test], test.labels[: config.limit_test]
    mean = std = None
    if config.normalize:
        if bool(tr_x.max() == tr_x.min()):  # (float rounding leaves std a hair above 0)
            raise UserError(f"--normalize: every pixel of the training images "
                            f"({train.source.directory}) has the same value, so there is no "
                            f"spread to divide by; train without --normalize")
        mean, std = _pixel_statistics(tr_x)
        if isinstance(std, list) and min(std) == 0:
            raise UserError(f"--normalize: channel {std.index(0)} of the training images "
                            f"({train.source.directory}) is constant, so there is no spread "
                            f"to divide by; train without --normalize")
    kw: dict[str, Any] = {"mean": mean, "std": std, "device": device}
    return (BatchLoader(tr_x, tr_y, config.batch_size, shuffle=True, seed=config.seed,
                        drop_last=config.drop_last, part=part, augment=config.augment, **kw),
            BatchLoader(te_x, te_y, EVAL_BATCH, shuffle=False, **kw))


def _pixel_statistics(images: torch.Tensor) -> tuple[Any, Any]:
    """Mean and std of the pixels in [0, 1]: one number for grey (N, H, W) images, one per
    channel for (N, C, H, W) ones (a channel at a time: CIFAR's train split is 150M pixels)."""
    if images.dim() == 3:
        pixels = images.float().div(255)
        return float(pixels.mean()), float(pixels.std())
    stats = [torch.std_mean(images[:, c].double().div(255)) for c in range(images.shape[1])]
    return [float(m) for _, m in stats], [float(s) for s, _ in stats]


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
    if diff:
        raise RunDirError(f"cannot resume {rd.path}: its config differs from this one ("
                          + "; ".join(diff) + "); pass the run's own flags, or choose "
                          "another --out")
    rd.remove_stale_temporaries()  # a process killed while writing left these
    return rd.load_checkpoint() if rd.has_checkpoint else None


def _check_shares(model: nn.Module, loader: BatchLoader, world: int) -> None:
    """BatchNorm in training needs two examples per batch on every rank: refuse up front."""
    from bnlab.norm.base import is_batch_norm

    if loader.smallest_share() < 2 and any(is_batch_norm(m) for m in model.modules()):
        raise UserError(
            f"a training batch would give a rank {loader.smallest_share()} example(s) "
            f"({loader.num_examples} training examples, --batch-size {loader.batch_size}, "
            f"{world} rank(s)), but BatchNorm needs at least 2 in training; use a "
            f"--batch-size of at least {2 * world} and at least {2 * world} training examples")


def _resume_state(raw: nn.Module, optimizer: torch.optim.Optimizer,
                  checkpoint: dict[str, Any], path: Path) -> None:
    """Load the checkpoint into the fresh model and optimizer (both discarded on failure)."""
    try:
        load_state_dict(raw, checkpoint["model"])  # all or nothing
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CorruptFileError(path, f"does not fit this run's model and optimizer "
                               f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})",
                               "restore the run's own checkpoint, or move it away and resume "
                               "(--resume) to retrain the run from its first epoch") from e


class Probe(Protocol):
    """A measurement taken every `every` steps, after backward and before the optimizer step.

    It receives the unwrapped model (with the step's gradients in ``.grad``) and the step's
    batch, returns a dict of numbers, and must leave the model, its gradients and the global
    RNG exactly as it found them (so a probed run trains like an unprobed one).
    """

    every: int

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        ...


def train(config: TrainConfig, out: str | Path, *, resume: bool = False,
          log: Callable[[str], None] = print, probe: Probe | None = None,
          model: ModelInput | None = None, train_data: Any = None,
          test_data: Any = None) -> Run:
    """Train `config` into run directory `out`; with `resume`, continue an interrupted run.

    Any network and data, as the textbook's ``train_ch6(net, train_iter, test_iter, ...)``:
    `model` is an ``nn.Module`` (trained in place), a zero-argument factory or
    ``"package.module:factory"`` (also accepted as ``config.model``); `train_data` and
    `test_data` are tensors ``(x, y)``, a ``Dataset`` or a ``DataLoader``
    (``bnlab.data.custom``). config.json then describes them (``model_info``, ``data_info``)
    and resuming refuses a network or data that do not match (``bnlab.train.user_model``).

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


def _run(inputs: Inputs, rd: RunDir, checkpoint: dict[str, Any] | None, fresh: bool,
         log: Callable[[str], None], device: torch.device, ddp: Dist,
         probe: Probe | None) -> Run:
    config = inputs.config
    if not ddp.main and rd.has_checkpoint:
        checkpoint = rd.load_checkpoint()
    if rd.done:
        if ddp.main and checkpoint is not None:  # derived from the checkpoint: repaired here
            rd.write_metrics(checkpoint["metrics"])
        log(f"{rd.path}: already complete")
        return Run(rd.path)
    threads = config.threads or (max(1, (os.cpu_count() or 1) // ddp.world) if ddp.active
                                 else None)
    if threads:
        torch.set_num_threads(threads)
    train_loader, test_loader = _loaders(config, device, log, (ddp.rank, ddp.world), inputs)
    raw = make_model(config, inputs.network).to(device)
    _check_shares(raw, train_loader, ddp.world)
    model: nn.Module = raw
    if ddp.active:
        model = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = _optimizer(config, raw)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    metrics: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    if checkpoint is not None:
        _resume_state(raw, optimizer, checkpoint, rd.path / CHECKPOINT)
        metrics = list(checkpoint["metrics"])
        probes = list(checkpoint.get("probes", []))
        log(f"{rd.path}: resuming after epoch {len(metrics)}")
    if ddp.main:
        if fresh:  # data and model are ready: now the directory becomes a run
            rd.write_config({**config.to_dict(), "provenance": provenance(threads)})
        rd.write_metrics(metrics)  # derived from the checkpoint: drops lines written after it
        if probe is not None:
            rd.write_metrics(probes, name="probes.jsonl")
    wall = metrics[-1]["wall_time"] if metrics else 0.0
    board = open_log(rd.path, config.tensorboard and ddp.main,
                     purge_step=len(metrics) * len(train_loader))  # a no-op unless asked for

    for epoch in range(len(metrics), config.epochs):
        model.train()
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0.0
        bar = Progress(len(train_loader), f"epoch {epoch + 1}/{config.epochs}",
                       config.progress and ddp.main)
        for i, (x, y) in enumerate(train_loader.batches(epoch)):
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            total = loss_fn(logits, y)
            # The global batch's mean loss; DDP averages gradients over ranks, hence * world.
            (total * (ddp.world / train_loader.global_batch_size(i))).backward()
            step = epoch * len(train_loader) + i
            if probe is not None and step % probe.every == 0:
                probes.append({"step": step, "epoch": epoch + 1, **probe(raw, x, y)})
            optimizer.step()
            with torch.no_grad():
                loss_sum += float(total)
                correct += int((logits.argmax(dim=1) == y).sum())
                seen += y.shape[0]
            board.step(step, total.detach() / y.shape[0], optimizer)
            bar.update(i + 1, loss=loss_sum / max(seen, 1), acc=correct / max(seen, 1))
        bar.close()
        loss_sum, correct, seen = ddp.sum([loss_sum, correct, seen], device)
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
            rd.save_checkpoint({"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                                "rng": torch.get_rng_state(), "metrics": metrics,
                                "probes": probes, "config": config.to_dict()})
            rd.write_metrics(metrics)
            if probe is not None:
                rd.write_metrics(probes, name="probes.jsonl")
            board.epoch(metrics[-1], raw)
        m = metrics[-1]
        log(f"epoch {m['epoch']:>2}: loss {m['train_loss']:.3f}, train acc {m['train_acc']:.3f}, "
            f"test acc {m['test_acc']:.3f}, {m['examples_per_sec']:.0f} examples/sec")
    board.close()
    if ddp.main:
        rd.mark_done({"final": metrics[-1], "device": str(device), "world_size": ddp.world,
                      "wall_time": wall, "provenance": provenance(threads)})
    ddp.barrier()
    return Run(rd.path)
