"""Santurkar et al. (2018): does BN smooth the loss landscape?

Every `every` steps, after the gradient g of the step's batch is computed and before the
optimizer moves, a probe walks along -g with step sizes eta in ETAS (times the learning rate),
on the same batch, and records: the range of the loss over those points ("loss landscape"),
the largest change of the gradient ||g(w - eta g) - g(w)|| ("gradient predictiveness"), and
the effective beta-smoothness, max ||g(w - eta g) - g(w)|| / ||eta g||. It restores weights,
gradients and BN buffers afterwards, so the probed run trains exactly like an unprobed one.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.report.figures import new_figure, save
from bnlab.studies.base import Arm, ArmResult, Findings, Study, summarize
from bnlab.train import TrainConfig

ETAS = (0.5, 1.0, 2.0, 4.0)
LABELS = {"none": "without BN", "bnlab": "with BN"}


class LandscapeProbe:
    def __init__(self, every: int, lr: float) -> None:
        self.every, self.lr = every, lr

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        params = [p for p in model.parameters() if p.grad is not None]
        w0 = [p.detach().clone() for p in params]
        g0 = [p.grad.detach().clone() for p in params]
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        gnorm = math.sqrt(sum(float(g.square().sum()) for g in g0))
        losses, changes, betas = [], [], []
        try:
            for k in ETAS:
                eta = k * self.lr
                with torch.no_grad():
                    for p, w, g in zip(params, w0, g0, strict=True):
                        p.copy_(w - eta * g)
                for p in params:
                    p.grad = None
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                change = math.sqrt(sum(float((p.grad - g).square().sum())
                                       for p, g in zip(params, g0, strict=True)))
                losses.append(loss.item())
                changes.append(change)
                betas.append(change / max(eta * gnorm, 1e-12))
        finally:
            with torch.no_grad():
                for p, w, g in zip(params, w0, g0, strict=True):
                    p.copy_(w)
                    p.grad = g
                for n, b in model.named_buffers():
                    b.copy_(buffers[n])
        return {"loss_range": max(losses) - min(losses), "grad_change": max(changes),
                "beta": max(betas), "grad_norm": gnorm}


def arms(quick: bool) -> list[Arm]:
    # The MNIST notebook's ReLU CNN: it trains without BN too (a sigmoid LeNet without BN sits
    # on a flat plateau for a short run, which would make its landscape look smooth for the
    # wrong reason). With lr 0.1 the probe's steps are 0.05 to 0.4, Santurkar et al.'s range.
    lr = 0.1
    cfg = {"model": "cnn", "lr": lr, "batch_size": 64, "epochs": 1 if quick else 2,
           "limit_train": 1024 if quick else 20000, "limit_test": 1000 if quick else 5000}
    every = 4 if quick else 20
    return [Arm(norm, LABELS[norm], TrainConfig(norm=norm, **cfg), {"norm": norm},
                probe=lambda: LandscapeProbe(every, lr)) for norm in LABELS]


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    for row, res in zip(rows, results, strict=True):
        for key in ("loss_range", "grad_change", "beta"):
            medians = [statistics.median(p[key] for p in r.probes) for r in res.runs]
            row[f"median_{key}"] = statistics.fmean(medians)
            row[f"median_{key}_std"] = statistics.pstdev(medians)
    off, on = rows[0], rows[1]

    def ratio(key: str) -> str:
        a, b = off[f"median_{key}"], on[f"median_{key}"]
        sa, sb = off[f"median_{key}_std"], on[f"median_{key}_std"]
        clear = "BN smoother" if a - b > 2 * max(sa, sb) else (
            "BN rougher" if b - a > 2 * max(sa, sb) else "within noise")
        return f"{a:.3g} +- {sa:.2g} vs {b:.3g} +- {sb:.2g} ({a / max(b, 1e-12):.2g}x, {clear})"

    verdict = (f"Along the gradient, without BN vs with BN (medians over training, mean +- std "
               f"over seeds): loss range {ratio('loss_range')}; gradient change "
               f"{ratio('grad_change')}; effective beta-smoothness {ratio('beta')}.")

    def plot(path: Path) -> None:
        fig, axes = new_figure(1, 3, figsize=(14, 3.6))
        keys = {"loss_range": "loss range along the gradient",
                "grad_change": "largest gradient change", "beta": "effective beta-smoothness"}
        for res in results:
            p = res.runs[0].probes
            steps = [q["step"] for q in p]
            for ax, key in zip(axes, keys, strict=True):
                ax.plot(steps, [q[key] for q in p], label=res.arm.label)
        for ax, title in zip(axes, keys.values(), strict=True):
            ax.set_title(f"{title} (seed 0)")
        for ax in axes:
            ax.set_yscale("log")
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
            ax.legend()
        save(fig, path)

    return Findings(rows, verdict, plot)


STUDY = Study("landscape", "Does BN make the loss landscape smoother (Santurkar et al.)?",
              arms, analyze)
