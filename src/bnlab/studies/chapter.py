"""The notebooks' comparisons end to end: does BN help each of the chapter's networks?

LeNet without BN (the LeNet chapter's) vs LeNet-BN with bnlab's and torch's BatchNorm (the BN
chapter's recipe), and the MNIST notebook's MLP and small CNN with and without BN (its recipe:
SGD lr 0.1, batch 32), all on Fashion-MNIST by default.
"""

from __future__ import annotations

from pathlib import Path

from bnlab.report.figures import plot_accuracy_and_loss
from bnlab.studies.base import Arm, ArmResult, Findings, Study, summarize
from bnlab.train import TrainConfig


def arms(quick: bool) -> list[Arm]:
    lenet = {"epochs": 1 if quick else 5, "limit_train": 2048 if quick else None,
             "limit_test": 1000 if quick else None}
    small = {"epochs": 1 if quick else 3, "batch_size": 32, "lr": 0.1,
             "limit_train": 1024 if quick else None, "limit_test": 1000 if quick else None}
    spec = [
        ("lenet-none", "LeNet, no BN", {"model": "lenet", "norm": "none", "lr": 0.9, **lenet}),
        ("lenet-bnlab", "LeNet-BN (bnlab)", {"model": "lenet-bn", "norm": "bnlab", **lenet}),
        ("lenet-torch", "LeNet-BN (torch)", {"model": "lenet-bn", "norm": "torch", **lenet}),
        ("mlp-none", "MLP, no BN", {"model": "mlp", "norm": "none", **small}),
        ("mlp-bnlab", "MLP + BN", {"model": "mlp", "norm": "bnlab", **small}),
        ("cnn-none", "small CNN, no BN", {"model": "cnn", "norm": "none", **small}),
        ("cnn-bnlab", "small CNN + BN", {"model": "cnn", "norm": "bnlab", **small}),
    ]
    return [Arm(name, label, TrainConfig(**kw), {"model": kw["model"], "norm": kw["norm"]})
            for name, label, kw in spec]


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    by = {(r["model"], r["norm"]): r for r in rows}
    pairs = [("LeNet", ("lenet", "none"), ("lenet-bn", "bnlab")),
             ("MLP", ("mlp", "none"), ("mlp", "bnlab")),
             ("CNN", ("cnn", "none"), ("cnn", "bnlab"))]
    def compare(a: dict, b: dict, key: str, lower_is_better: bool) -> str:
        diff = b[key] - a[key]
        noise = 2 * max(a[f"{key}_std"], b[f"{key}_std"], 1e-9)
        better = (diff < -noise) if lower_is_better else (diff > noise)
        worse = (diff > noise) if lower_is_better else (diff < -noise)
        word = "better" if better else ("worse" if worse else "within noise")
        return (f"{a[key]:.3f} +- {a[f'{key}_std']:.3f} -> {b[key]:.3f} +- "
                f"{b[f'{key}_std']:.3f} ({word})")

    parts = []
    for name, off, on in pairs:
        a, b = by[off], by[on]
        parts.append(f"{name}: train loss {compare(a, b, 'train_loss', True)}, test accuracy "
                     f"{compare(a, b, 'test_acc', False)}")
    twin = abs(by[("lenet-bn", "bnlab")]["test_acc"] - by[("lenet-bn", "torch")]["test_acc"])
    verdict = ("With BN (2 std = the bar for 'better'): " + "; ".join(parts)
               + f". bnlab and torch BN differ by {twin:.4f} in test accuracy.")

    def plot(path: Path) -> None:
        plot_accuracy_and_loss(
            rows, path, "The chapter's networks with and without BN (mean +- std, 3 seeds)")

    return Findings(rows, verdict, plot)


STUDY = Study("chapter", "Does BN help each of the chapter's networks?", arms, analyze,
              needs="it compares the chapter's networks themselves")
