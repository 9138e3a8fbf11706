"""Why can the learning rate go up with BN? A learning-rate sweep with and without BN.

The same LeNet (the BN chapter's, sigmoid) is trained with plain SGD at log-spaced learning
rates, once without normalization and once with bnlab's BatchNorm. The answer is the *usable
range*: the learning rates at which each trains on every seed (Ioffe &
Szegedy 2015 trained their BN-x5/x30 networks at 5x/30x the base rate; Bjorck et al. 2018
argue BN's benefit is mostly this larger usable rate).
"""

from __future__ import annotations

from pathlib import Path

from bnlab.report.figures import new_figure, save
from bnlab.studies.base import Arm, ArmResult, Findings, Study, summarize
from bnlab.train import TrainConfig

LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
NORMS = {"none": "no BN", "bnlab": "BN"}


def arms(quick: bool) -> list[Arm]:
    lrs = (0.1, 1.0, 10.0) if quick else LRS
    # The full training set: the sigmoid LeNet without BN needs about one epoch to leave its
    # initial plateau at any learning rate.
    base = TrainConfig(model="lenet-bn", epochs=1 if quick else 3,
                       limit_train=2048 if quick else None, limit_test=1000 if quick else 5000)
    return [Arm(f"{norm}-lr{lr:g}", f"{NORMS[norm]}, lr {lr:g}",
                TrainConfig(**{**base.to_dict(), "norm": norm, "lr": lr}),
                {"norm": norm, "lr": lr})
            for norm in NORMS for lr in lrs]


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    # "Usable": training works on every seed, i.e. each seed's final train loss is finite and
    # within twice the best mean train loss of the whole sweep (chance is ln 10 = 2.30).
    best_loss = min(r["train_loss"] for r in rows if r["train_loss"] == r["train_loss"])
    bar = 2 * best_loss
    worst_seed = {res.arm.name: max(res.finals("train_loss")) for res in results}
    for row, res in zip(rows, results, strict=True):
        row["usable"] = bool(worst_seed[res.arm.name] <= bar)
    ranges = {n: [r["lr"] for r in rows if r["norm"] == n and r["usable"]] for n in NORMS}

    def span(lrs: list[float]) -> str:
        return f"{min(lrs):g} to {max(lrs):g}" if lrs else "none"

    def best(norm: str, key: str, lower: bool) -> str:
        pts = [r for r in rows if r["norm"] == norm and r[key] == r[key]]
        r = (min if lower else max)(pts, key=lambda r: r[key])
        return f"{r[key]:.3f} +- {r[f'{key}_std']:.3f} at lr {r['lr']:g}"

    verdict = (f"Learning rates that train (every seed's final train loss <= {bar:.3f}, twice "
               f"the best): without BN {span(ranges['none'])}, with BN {span(ranges['bnlab'])}. "
               f"Lowest train loss: without BN {best('none', 'train_loss', True)}, with BN "
               f"{best('bnlab', 'train_loss', True)}; best test accuracy: without BN "
               f"{best('none', 'test_acc', False)}, with BN {best('bnlab', 'test_acc', False)}.")

    def plot(path: Path) -> None:
        fig, axes = new_figure(1, 2, figsize=(11, 4.0))
        for norm, label in NORMS.items():
            pts = [r for r in rows if r["norm"] == norm]
            for ax, key in zip(axes, ("train_loss", "test_acc"), strict=True):
                ax.errorbar([r["lr"] for r in pts], [r[key] for r in pts],
                            yerr=[r[f"{key}_std"] for r in pts], marker="o", ms=4, capsize=3,
                            label=label)
        axes[0].axhline(bar, color="gray", ls=":", label="usable bar")
        for ax, name in zip(axes, ("final train loss", "final test accuracy"), strict=True):
            ax.set_xscale("log")
            ax.set_xlabel("learning rate (SGD)")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        save(fig, path, "LeNet on Fashion-MNIST: learning-rate sweep (mean +- std, 3 seeds)")

    return Findings(rows, verdict, plot)


STUDY = Study("lr", "Why can the learning rate go up with BN?", arms, analyze)
