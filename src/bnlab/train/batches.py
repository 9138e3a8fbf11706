"""The batches of a run: bnlab's dataset (optionally standardized and augmented) or the user's.

Either way a ``BatchLoader``: the order of epoch e depends only on (seed, e), and each rank of
a data-parallel run gets its share of every global batch (``bnlab.data.loader``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bnlab.data import BatchLoader, load_split
from bnlab.data.custom import batches_of
from bnlab.errors import UserError
from bnlab.train.config import TrainConfig

__all__ = ["EVAL_BATCH", "loaders", "pixel_statistics"]

# Evaluation batch: eval mode is per-example, so this only sets speed. On the 2-core CPU, 256
# LeNet-BN test images at a time take 115 ms per 10k, 1000 at a time 268 ms (the activations of
# a bigger batch leave the L2 cache).
EVAL_BATCH = 256


def loaders(config: TrainConfig, device: torch.device, log: Callable[[str], None],
            part: tuple[int, int], train_data: Any = None,
            test_data: Any = None) -> tuple[BatchLoader, BatchLoader]:
    """(train, test) loaders of the run; the user's data when given."""
    if train_data is not None:  # the user's data, in bnlab's order (bnlab.data.custom)
        loaders = (batches_of(train_data, config.batch_size, limit=config.limit_train,
                              what="train_data", shuffle=True, seed=config.seed,
                              drop_last=config.drop_last, part=part, device=device),
                   batches_of(test_data, EVAL_BATCH, limit=config.limit_test,
                              what="test_data", shuffle=False, device=device))
        for loader, limit, flag in zip(loaders, (config.limit_train, config.limit_test),
                                       ("--limit-train", "--limit-test"), strict=True):
            size = len(loader.labels)  # (the examples drawn from, before any limit)
            if limit is not None and limit > size:
                log(f"warning: {flag} {limit} is more than the {size} examples your data "
                    f"has; all {size} are used")
        return loaders
    train = load_split(config.dataset, "train", config.data_dir, log=log)
    test = load_split(config.dataset, "test", config.data_dir, log=log)
    for split, limit, flag in ((train, config.limit_train, "--limit-train"),
                               (test, config.limit_test, "--limit-test")):
        if limit is not None and limit > len(split):
            log(f"warning: {flag} {limit} is more than the {len(split)} examples "
                f"{config.dataset} has; all {len(split)} are used")
    tr_x, tr_y = train.images[: config.limit_train], train.labels[: config.limit_train]
    te_x, te_y = test.images[: config.limit_test], test.labels[: config.limit_test]
    mean = std = None
    if config.normalize:
        if bool(tr_x.max() == tr_x.min()):  # (float rounding leaves std a hair above 0)
            raise UserError(f"--normalize: every pixel of the training images "
                            f"({train.source.directory}) has the same value, so there is no "
                            f"spread to divide by; train without --normalize")
        mean, std = pixel_statistics(tr_x)
        if isinstance(std, list) and min(std) == 0:
            raise UserError(f"--normalize: channel {std.index(0)} of the training images "
                            f"({train.source.directory}) is constant, so there is no spread "
                            f"to divide by; train without --normalize")
    kw: dict[str, Any] = {"mean": mean, "std": std, "device": device}
    return (BatchLoader(tr_x, tr_y, config.batch_size, shuffle=True, seed=config.seed,
                        drop_last=config.drop_last, part=part, augment=config.augment, **kw),
            BatchLoader(te_x, te_y, EVAL_BATCH, shuffle=False, **kw))


def pixel_statistics(images: torch.Tensor) -> tuple[Any, Any]:
    """Mean and std of the pixels in [0, 1]: one number for grey (N, H, W) images, one per
    channel for (N, C, H, W) ones (a channel at a time: CIFAR's train split is 150M pixels)."""
    if images.dim() == 3:
        pixels = images.float().div(255)
        return float(pixels.mean()), float(pixels.std())
    stats = [torch.std_mean(images[:, c].double().div(255)) for c in range(images.shape[1])]
    return [float(m) for _, m in stats], [float(s) for s, _ in stats]
