"""Importable by Ray workers (the cluster's PYTHONPATH holds the repository): a tiny dataset
for `--dataset tests.studies.sweep_helpers:tiny_data`, and a probe that kills its worker."""

from __future__ import annotations

import os

import torch


def tiny_data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """512 training and 256 test 28x28 grey images whose class sets the mean brightness, so a
    LeNet-BN learns something in two epochs (the numbers are then worth comparing)."""
    g = torch.Generator().manual_seed(1234)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=g)
        x = torch.randn(n, 1, 28, 28, generator=g) + y.view(n, 1, 1, 1) / 2
        return x, y

    return split(512), split(256)


def die() -> None:
    """A probe factory that ends the worker process at once, as a crash or the OOM killer
    would: called in the worker as its run starts."""
    os._exit(17)


def run_dying(out: str, address: str) -> int:
    """A one-arm study whose every attempt kills its worker, on the cluster at `address` with
    one retry: prints the sweep's one-line error and returns 1 (what the CLI would do)."""
    from dataclasses import replace

    from bnlab.studies import momentum
    from bnlab.studies.base import Study, run_study
    from bnlab.studies.sweep import Sweep

    arm = momentum.STUDY.arms(True)[0]
    study = Study("dying", "?", lambda quick: [replace(arm, name="dying", label="dying",
                                                       probe=die)],
                  momentum.STUDY.analyze)
    try:
        run_study(study, out, quick=True, threads=1, dataset=f"{__name__}:tiny_data",
                  sweep=Sweep(workers=1, address=address, retries=1), progress=False)
    except RuntimeError as e:
        print(str(e))
        return 1
    return 0
