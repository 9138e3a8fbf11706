"""Small batches: BN's statistics get noisy; which remedy holds up?

BN, Batch Renorm, GroupNorm, LayerNorm and no normalization, across batch sizes with the
learning rate scaled linearly (lr = 1.0 * B / 256) and the same number of training examples
seen, so the small batches take more steps (Wu & He 2018's comparison, at LeNet scale).
"""

from __future__ import annotations

from pathlib import Path

from bnlab.report.figures import plot_sweep
from bnlab.studies.base import Arm, ArmResult, Findings, Study, summarize
from bnlab.train import TrainConfig

NORMS = {"bnlab": "BN", "renorm": "Batch Renorm", "group": "GroupNorm", "layer": "LayerNorm",
         "none": "no norm"}
BATCHES = (2, 8, 32, 128)


def arms(quick: bool) -> list[Arm]:
    batches = (4, 64) if quick else BATCHES
    base = TrainConfig(model="lenet-bn", epochs=1, limit_train=512 if quick else 6144,
                       limit_test=1000 if quick else 5000)
    return [Arm(f"{norm}-b{b}", f"{NORMS[norm]}, batch {b}",
                TrainConfig(**{**base.to_dict(), "norm": norm, "batch_size": b,
                               "lr": 1.0 * b / 256}),
                {"norm": norm, "batch": b})
            for norm in NORMS for b in batches]


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    batches = sorted({r["batch"] for r in rows})
    small, large = batches[0], batches[-1]

    def acc(norm: str, b: int) -> float:
        return next(r["test_acc"] for r in rows if r["norm"] == norm and r["batch"] == b)

    drops = {n: acc(n, large) - acc(n, small) for n in NORMS}
    worst = max(drops, key=lambda n: drops[n])
    steadiest = min((n for n in NORMS if n != "none"), key=lambda n: abs(drops[n]))
    def at(norm: str, b: int) -> str:
        r = next(r for r in rows if r["norm"] == norm and r["batch"] == b)
        return f"{r['test_acc']:.3f} +- {r['test_acc_std']:.3f}"

    verdict = (f"From batch {large} to batch {small}, test accuracy falls most for "
               f"{NORMS[worst]} ({at(worst, large)} -> {at(worst, small)}) and least for "
               f"{NORMS[steadiest]} ({at(steadiest, large)} -> {at(steadiest, small)}).")

    def plot(path: Path) -> None:
        series = {}
        for norm, label in NORMS.items():
            pts = sorted((r for r in rows if r["norm"] == norm), key=lambda r: r["batch"])
            series[label] = ([r["batch"] for r in pts], [r["test_acc"] for r in pts],
                             [r["test_acc_std"] for r in pts])
        plot_sweep(series, path, "batch size (lr scaled linearly)", "final test accuracy",
                   "Small batches: BN vs its remedies")

    return Findings(rows, verdict, plot)


STUDY = Study("batch-size", "What happens to BN with small batches?", arms, analyze)
