"""Small batches: BN's statistics get noisy; which remedy holds up?

BN, Batch Renorm (rmax = 3, dmax = 5 from the first step: these runs are shorter than the
paper's 5k-step warm-up), GroupNorm, LayerNorm and no normalization, across batch sizes with the
learning rate scaled linearly (lr = 1.0 * B / 256) and the same number of training examples
seen, so the small batches take more steps (Wu & He 2018's comparison, at LeNet scale). Each
layer is judged at the smallest batch against its own best batch size.
"""

from __future__ import annotations

from pathlib import Path

from bnlab.report.figures import plot_sweep
from bnlab.studies.base import Arm, ArmResult, Findings, Study, summarize
from bnlab.train import TrainConfig

NORMS = {"bnlab": "BN", "renorm-fixed": "Batch Renorm", "group": "GroupNorm",
         "layer": "LayerNorm", "none": "no norm"}
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
    smallest = min(r["batch"] for r in rows)

    def loss_at_small(norm: str) -> str:
        """Accuracy at the smallest batch against the norm's own best batch size."""
        pts = [r for r in rows if r["norm"] == norm]
        best = max(pts, key=lambda r: r["test_acc"])
        small = next(r for r in pts if r["batch"] == smallest)
        return (f"{NORMS[norm]} {small['test_acc']:.3f} +- {small['test_acc_std']:.3f} "
                f"(its best: {best['test_acc']:.3f} +- {best['test_acc_std']:.3f} at batch "
                f"{best['batch']})")

    ran = [n for n in NORMS if any(r["norm"] == n for r in rows)]  # a user's net: maybe BN only
    verdict = (f"Test accuracy at batch {smallest} against each layer's best batch size: "
               + "; ".join(loss_at_small(n) for n in ran) + ".")

    def plot(path: Path) -> None:
        series = {}
        for norm in ran:
            label = NORMS[norm]
            pts = sorted((r for r in rows if r["norm"] == norm), key=lambda r: r["batch"])
            series[label] = ([r["batch"] for r in pts], [r["test_acc"] for r in pts],
                             [r["test_acc_std"] for r in pts])
        plot_sweep(series, path, "batch size (lr scaled linearly)", "final test accuracy",
                   "Small batches: BN vs its remedies")

    return Findings(rows, verdict, plot)


STUDY = Study("batch-size", "What happens to BN with small batches?", arms, analyze)
