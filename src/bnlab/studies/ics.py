"""Ioffe & Szegedy's Figure 1, replicated: test accuracy over training, and how the input of
one last-layer sigmoid unit moves (its 15th, 50th and 85th percentiles), with and without BN.

The network is theirs: three sigmoid layers of 100 units (a BN layer before each sigmoid in the
BN arm), batch 60, plain SGD. Every `every` steps a probe evaluates, in eval mode and without
touching the training state, a fixed test subset: accuracy, and the percentiles of unit 0 of
the last hidden layer's pre-sigmoid input (BN's output in the BN arm).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
from torch import nn

from bnlab.data import load_split
from bnlab.report.figures import new_figure, save
from bnlab.studies.base import Arm, ArmResult, Findings, Study, summarize
from bnlab.train import TrainConfig

LABELS = {"none": "without BN", "bnlab": "with BN"}


class UnitInputProbe:
    def __init__(self, every: int, n_test: int, unit: int = 0) -> None:
        test = load_split("fashion-mnist", "test", log=lambda m: None)
        self.x = test.images[:n_test].unsqueeze(1).float().div(255)  # (n,1,28,28)
        self.y = test.labels[:n_test]
        self.every, self.unit = every, unit

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        sigmoids = [m for m in model.modules() if isinstance(m, nn.Sigmoid)]
        if not sigmoids:
            raise ValueError("the unit-input probe hooks the model's last nn.Sigmoid, and this "
                             "model has none (a fused model? train it with fuse=False)")
        seen: list[torch.Tensor] = []
        hook = sigmoids[-1].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                acc = float((model(self.x).argmax(1) == self.y).float().mean())
        finally:
            hook.remove()
            model.train(was)
        q = torch.quantile(seen[0][:, self.unit].double(),
                           torch.tensor([0.15, 0.5, 0.85], dtype=torch.float64))
        return {"test_acc": acc, "p15": float(q[0]), "p50": float(q[1]), "p85": float(q[2])}


def arms(quick: bool) -> list[Arm]:
    # fuse=False: the probe hooks the model's last nn.Sigmoid, which fusion would absorb.
    cfg = {"model": "mlp3", "batch_size": 60, "lr": 0.5, "epochs": 1 if quick else 3,
           "fuse": False,
           "limit_train": 1200 if quick else None, "limit_test": 1000}
    every, n_test = (5, 500) if quick else (50, 2000)
    return [Arm(norm, LABELS[norm], TrainConfig(norm=norm, **cfg), {"norm": norm},
                probe=lambda: UnitInputProbe(every, n_test)) for norm in LABELS]


def drift(probes: list[dict]) -> float:
    """How much the median input moves over the second half of training (std of p50)."""
    half = [p["p50"] for p in probes[len(probes) // 2:]]
    return statistics.pstdev(half) if len(half) > 1 else 0.0


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    for row, res in zip(rows, results, strict=True):
        drifts = [drift(r.probes) for r in res.runs]
        row["median_drift"] = statistics.fmean(drifts)
        row["median_drift_std"] = statistics.pstdev(drifts)
        first = [next((p["step"] for p in r.probes if p["test_acc"] >= 0.7), float("nan"))
                 for r in res.runs]
        row["steps_to_0.7"] = statistics.fmean(first)
    off, on = rows[0], rows[1]

    def steps(row: dict) -> str:
        n = row["steps_to_0.7"]
        return "not within the run" if math.isnan(n) else f"after {n:.0f} steps"

    verdict = (f"With BN the test accuracy reaches 0.7 {steps(on)} (without: {steps(off)}) "
               f"and the last layer's median input "
               f"drifts by {on['median_drift']:.3f} +- {on['median_drift_std']:.3f} over the "
               f"second half of training (without: {off['median_drift']:.3f} +- "
               f"{off['median_drift_std']:.3f}).")

    def plot(path: Path) -> None:
        fig, axes = new_figure(1, 3, figsize=(13, 3.6))
        for res in results:
            p = res.runs[0].probes
            steps = [q["step"] for q in p]
            axes[0].plot(steps, [q["test_acc"] for q in p], label=res.arm.label)
        for ax, res in zip(axes[1:], results, strict=True):
            p = res.runs[0].probes
            steps = [q["step"] for q in p]
            for key in ("p15", "p50", "p85"):
                ax.plot(steps, [q[key] for q in p], label=key)
            ax.set_title(f"last-layer unit input, {res.arm.label}")
            ax.legend()
        axes[0].set_title("test accuracy")
        axes[0].legend()
        for ax in axes:
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
        save(fig, path)

    return Findings(rows, verdict, plot)


STUDY = Study("ics", "Ioffe & Szegedy's Figure 1: does BN stabilize a unit's input "
              "distribution?", arms, analyze)
