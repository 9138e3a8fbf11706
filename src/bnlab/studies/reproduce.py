"""The chapter's experiment: LeNet without BN vs with bnlab's BN vs with torch's BN.

Three runs of the textbook recipe (Fashion-MNIST, batch 256, plain SGD, Xavier init, 10
epochs): the LeNet chapter's network at its lr 0.9, and the BN chapter's network at its lr 1.0
with bnlab's and with torch's BatchNorm (same seed, so the same initial weights). Each run is a
run directory; the table, ``curves.png`` and ``REPORT.md`` are built from those directories, so
re-running the report never retrains (finished runs are reused, interrupted ones resumed).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bnlab.report.figures import plot_curves
from bnlab.report.inspect import bn_layers, format_layers, load_state
from bnlab.train import Run, TrainConfig, train

__all__ = ["ARMS", "ReproduceResult", "reproduce", "write_report"]

# name -> (description, config)
ARMS: dict[str, tuple[str, TrainConfig]] = {
    "no-bn": ("LeNet (LeNet chapter), no BN, lr 0.9",
              TrainConfig(model="lenet", norm="none", lr=0.9)),
    "bnlab-bn": ("LeNet-BN with bnlab.BatchNorm, lr 1.0",
                 TrainConfig(model="lenet-bn", norm="bnlab", lr=1.0)),
    "torch-bn": ("LeNet-BN with torch.nn.BatchNorm, lr 1.0",
                 TrainConfig(model="lenet-bn", norm="torch", lr=1.0)),
}
QUICK = {"epochs": 2, "limit_train": 4096, "limit_test": 2000}


@dataclass
class ReproduceResult:
    out: Path
    runs: dict[str, Run]
    table: str
    report: Path
    curves: Path


def textbook_line(run: Run) -> str:
    f = run.final
    done = run.dir.read_done() or {}
    device = done.get("device", run.config.device)
    return (f"loss {f['train_loss']:.3f}, train acc {f['train_acc']:.3f}, test acc "
            f"{f['test_acc']:.3f}, {f['examples_per_sec']:.0f} examples/sec on {device}")


def comparison_table(runs: dict[str, Run]) -> str:
    head = ("| run | model | norm | lr | train loss | train acc | test acc | best test acc "
            "| examples/s | wall time |\n|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for name, run in runs.items():
        c, f = run.config, run.final
        best = max(m["test_acc"] for m in run.metrics)
        rows.append(f"| {name} | {c.model} | {c.norm} | {c.lr:g} | {f['train_loss']:.3f} | "
                    f"{f['train_acc']:.3f} | {f['test_acc']:.3f} | {best:.3f} | "
                    f"{f['examples_per_sec']:.0f} | {f['wall_time']:.1f} s |")
    return head + "\n".join(rows) + "\n"


def _agreement(runs: dict[str, Run]) -> str:
    if "bnlab-bn" not in runs or "torch-bn" not in runs:
        return ""
    a, b = runs["bnlab-bn"].metrics, runs["torch-bn"].metrics
    gap = max(abs(x["test_acc"] - y["test_acc"]) for x, y in zip(a, b, strict=False))
    loss_gap = max(abs(x["train_loss"] - y["train_loss"]) for x, y in zip(a, b, strict=False))
    return (f"bnlab's and torch's BatchNorm start from identical weights (same seed). Largest "
            f"per-epoch difference over the run: test accuracy {gap:.4f}, train loss "
            f"{loss_gap:.4f} (float32 rounding differences of ~1e-7 per step grow through "
            f"training; a single step agrees to float rounding, see tests/norm).\n")


def write_report(out: Path, runs: dict[str, Run]) -> tuple[Path, Path, str]:
    """Build curves.png and REPORT.md in `out` from the run directories."""
    curves = plot_curves(list(runs.values()), out / "curves.png", labels=list(runs),
                         title="LeNet on Fashion-MNIST: without BN, bnlab BN, torch BN")
    table = comparison_table(runs)
    lines = ["# bnlab reproduce: the textbook's LeNet-BN comparison", "",
             f"Fashion-MNIST, batch {next(iter(runs.values())).config.batch_size}, plain SGD, "
             f"Xavier-uniform init; torch {torch.__version__}, {platform.machine()}, "
             f"{torch.get_num_threads()} threads.", "", "## Textbook-style summary", "", "```"]
    for name, run in runs.items():
        lines.append(f"{name:>9}: {textbook_line(run)}")
    lines += ["```", "", "## Comparison", "", table, _agreement(runs),
              "![learning curves](curves.png)", ""]
    if "bnlab-bn" in runs:
        layers = bn_layers(load_state(runs["bnlab-bn"].path))
        lines += ["## What the BN layers learned (bnlab-bn)", "",
                  "gamma (scale) and beta (shift) per channel, and the running statistics used "
                  "at test time; the first layer is the notebooks' `net[1].gamma`.", "", "```",
                  format_layers(layers), "```", ""]
    lines += ["Runs: " + ", ".join(f"[{n}]({n}/)" for n in runs), ""]
    report = out / "REPORT.md"
    report.write_text("\n".join(lines))
    return report, curves, table


def reproduce(epochs: int = 10, out: str | Path = "runs/reproduce", *, quick: bool = False,
              seed: int = 0, data_dir: str | None = None, threads: int | None = None,
              device: str = "auto", log: Callable[[str], None] = print) -> ReproduceResult:
    """Train (or reuse) the three runs and write the report into `out`."""
    out = Path(out)
    overrides = {"epochs": epochs, "seed": seed, "data_dir": data_dir, "threads": threads,
                 "device": device, **(QUICK if quick else {})}
    runs: dict[str, Run] = {}
    for name, (desc, base) in ARMS.items():
        log(f"== {name}: {desc}")
        runs[name] = train(replace(base, **overrides), out / name, resume=True, log=log)
        log(f"{name}: {textbook_line(runs[name])}")
    report, curves, table = write_report(out, runs)
    return ReproduceResult(out, runs, table, report, curves)
