"""Which axes should be averaged? Per-channel BN vs per-activation BN vs Layer/Instance/Group.

The seed notes ask why a convolution's BatchNorm averages over (N, H, W) per channel instead
of over the batch only (one mean per (C, H, W) position). The same LeNet is trained with each
member of the normalization-axes family (instance norm on the convolutions only: the linear
layers have no spatial axes, so BN stays there).
"""

from __future__ import annotations

from pathlib import Path

from bnlab.report.figures import plot_accuracy_and_loss
from bnlab.studies.base import Arm, ArmResult, Findings, Study, summarize
from bnlab.train import TrainConfig

NORMS = {"none": "no norm", "bnlab": "BN (per channel)",
         "per-activation": "BN (per activation)", "layer": "LayerNorm", "group": "GroupNorm",
         "instance-conv": "InstanceNorm (conv) + BN (linear)"}


def arms(quick: bool) -> list[Arm]:
    base = TrainConfig(model="lenet-bn", epochs=1 if quick else 4, lr=1.0,
                       limit_train=2048 if quick else 30000, limit_test=1000 if quick else 10000)
    return [Arm(norm, label, TrainConfig(**{**base.to_dict(), "norm": norm}), {"norm": norm})
            for norm, label in NORMS.items()]


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    ranked = sorted((r for r in rows if r["test_acc"] == r["test_acc"]),
                    key=lambda r: -r["test_acc"])
    top, second = ranked[0], ranked[1]
    gap = top["test_acc"] - second["test_acc"]
    clear = "clearly" if gap > 2 * max(top["test_acc_std"], second["test_acc_std"]) else \
        "not clearly (within 2 std)"
    order = ", ".join(f"{r['arm']} {r['test_acc']:.3f} +- {r['test_acc_std']:.3f}"
                      for r in ranked)
    verdict = (f"Test accuracy, best first: {order}. {top['arm']} is {clear} ahead of "
               f"{second['arm']}.")

    def plot(path: Path) -> None:
        plot_accuracy_and_loss(
            rows, path, "Which axes to average over (LeNet, Fashion-MNIST; mean +- std)")

    return Findings(rows, verdict, plot)


STUDY = Study("axes", "Which axes should be averaged over?", arms, analyze,
              needs="its analysis compares every member of the norm family on LeNet-BN")
