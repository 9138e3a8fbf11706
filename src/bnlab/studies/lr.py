"""Why can the learning rate go up with BN? A learning-rate sweep with and without BN.

The same LeNet (the BN chapter's, sigmoid) is trained with plain SGD at log-spaced learning
rates, once without normalization and once with bnlab's BatchNorm. The answer is the *usable
range*: the learning rates at which each reaches good accuracy without diverging (Ioffe &
Szegedy 2015 trained their BN-x5/x30 networks at 5x/30x the base rate; Bjorck et al. 2018
argue BN's benefit is mostly this larger usable rate).
"""

from __future__ import annotations

from pathlib import Path

from bnlab.report.figures import plot_sweep
from bnlab.studies.base import Arm, ArmResult, Findings, Study, summarize
from bnlab.train import TrainConfig

LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
NORMS = {"none": "no BN", "bnlab": "BN"}


def arms(quick: bool) -> list[Arm]:
    lrs = (0.1, 1.0, 10.0) if quick else LRS
    base = TrainConfig(model="lenet-bn", epochs=1 if quick else 3,
                       limit_train=2048 if quick else 20000, limit_test=1000 if quick else 5000)
    return [Arm(f"{norm}-lr{lr:g}", f"{NORMS[norm]}, lr {lr:g}",
                TrainConfig(**{**base.to_dict(), "norm": norm, "lr": lr}),
                {"norm": norm, "lr": lr})
            for norm in NORMS for lr in lrs]


def usable(rows: list[dict], norm: str, threshold: float) -> list[float]:
    return [r["lr"] for r in rows if r["norm"] == norm and r["test_acc"] >= threshold
            and r["diverged"] == 0]


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    best = max((r["test_acc"] for r in rows if r["test_acc"] == r["test_acc"]), default=0.0)
    threshold = round(0.9 * best, 3)
    ranges = {norm: usable(rows, norm, threshold) for norm in NORMS}

    def span(lrs: list[float]) -> str:
        return f"{min(lrs):g}..{max(lrs):g}" if lrs else "none"

    widths = {n: (max(v) / min(v) if v else 0.0) for n, v in ranges.items()}
    wider = "BN" if widths["bnlab"] > widths["none"] else "no BN"
    def best(norm: str) -> str:
        r = max((r for r in rows if r["norm"] == norm and r["test_acc"] == r["test_acc"]),
                key=lambda r: r["test_acc"], default=None)
        return "-" if r is None else \
            f"{r['test_acc']:.3f} +- {r['test_acc_std']:.3f} at lr {r['lr']:g}"

    verdict = (f"Usable learning rates (mean test accuracy >= {threshold:.3f}, 90% of the best, "
               f"no seed diverged): without BN {span(ranges['none'])}, with BN "
               f"{span(ranges['bnlab'])}; the wider range is {wider}'s. Best: without BN "
               f"{best('none')}, with BN {best('bnlab')}.")

    def plot(path: Path) -> None:
        series = {}
        for norm, label in NORMS.items():
            pts = [r for r in rows if r["norm"] == norm]
            series[label] = ([r["lr"] for r in pts], [r["test_acc"] for r in pts],
                             [r["test_acc_std"] for r in pts])
        plot_sweep(series, path, "learning rate (SGD)", "final test accuracy",
                   "LeNet on Fashion-MNIST: learning-rate sweep")

    return Findings(rows, verdict, plot)


STUDY = Study("lr", "Why can the learning rate go up with BN?", arms, analyze)
