"""A study: a question, the arms that answer it, and an analysis of their run directories.

``run_study(study, out)`` trains every arm for every seed into ``out/runs/<arm>-s<seed>``
(finished runs are reused, interrupted ones resumed), then writes, from those directories
alone: ``table.md`` and ``table.csv`` (mean +- std over seeds), ``figure.png``, ``verdict`` (one
line the data support) and ``study.json`` (question, arms, seeds, every config). With
``analyze_only=True`` nothing is trained: the report is rebuilt from the saved runs.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bnlab.train import Run, TrainConfig, train
from bnlab.train.loop import Probe
from bnlab.train.progress import Progress

__all__ = ["Arm", "ArmResult", "Findings", "Study", "run_study", "summarize"]


@dataclass(frozen=True)
class Arm:
    """One configuration of a study, trained once per seed."""

    name: str
    label: str
    config: TrainConfig
    tags: dict[str, Any] = field(default_factory=dict)  # e.g. {"lr": 0.1, "norm": "bnlab"}
    probe: Callable[[], Probe] | None = None  # a fresh per-step measurement for each run


@dataclass
class ArmResult:
    arm: Arm
    runs: list[Run]

    def finals(self, key: str) -> list[float]:
        return [r.final[key] for r in self.runs]

    def mean_std(self, key: str) -> tuple[float, float]:
        values = self.finals(key)
        if any(not math.isfinite(v) for v in values):
            return math.nan, math.nan
        return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0

    @property
    def failed(self) -> int:
        """Seeds that diverged (non-finite loss) or never beat chance (test accuracy <= 0.15)."""
        return sum(1 for r in self.runs if not math.isfinite(r.final["train_loss"])
                   or r.final["test_acc"] <= 0.15)


@dataclass
class Findings:
    rows: list[dict[str, Any]]  # the table
    verdict: str
    plot: Callable[[Path], None]  # draws figure.png at the given path


@dataclass(frozen=True)
class Study:
    name: str
    question: str
    arms: Callable[[bool], list[Arm]]  # quick -> arms
    analyze: Callable[[list[ArmResult]], Findings]
    seeds: int = 3


def summarize(results: Sequence[ArmResult]) -> list[dict[str, Any]]:
    """The default table: final test accuracy and train loss, mean +- std over seeds."""
    rows = []
    for res in results:
        acc, acc_sd = res.mean_std("test_acc")
        loss, loss_sd = res.mean_std("train_loss")
        rows.append({"arm": res.arm.label, **res.arm.tags, "seeds": len(res.runs),
                     "test_acc": acc, "test_acc_std": acc_sd, "train_loss": loss,
                     "train_loss_std": loss_sd, "failed": res.failed})
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    keys = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in rows]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    with (out / "table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def run_study(study: Study, out: str | Path, *, quick: bool = False, seeds: int | None = None,
              analyze_only: bool = False, data_dir: str | None = None,
              threads: int | None = None, log: Callable[[str], None] = print,
              progress: bool = True) -> Findings:
    """Train (or, `analyze_only`, read) every arm for every seed, then write the report files.

    With `progress`, one bar over the runs ("run 7 of 24, ETA 4:00"; see
    ``bnlab.train.progress`` for where bars are drawn).
    """
    out = Path(out)
    n_seeds = seeds or (1 if quick else study.seeds)
    results = []
    all_arms = study.arms(quick)
    bar = Progress(len(all_arms) * n_seeds, f"[{study.name}]", progress and not analyze_only,
                   unit="run", bar_format="{desc} run {n_fmt} of {total_fmt}, "
                   "ETA {remaining} |{bar}| {elapsed}")
    say = bar.write if bar.enabled and log is print else log  # lines above the bar
    for arm in all_arms:
        runs = []
        for seed in range(n_seeds):
            cfg = replace(arm.config, seed=seed, data_dir=data_dir, threads=threads,
                          progress=False)
            path = out / "runs" / f"{arm.name}-s{seed}"
            if analyze_only:
                if not (path / "DONE").exists():
                    raise FileNotFoundError(f"{path} is not a finished run: train the study "
                                            f"first (without --analyze-only)")
                run = Run(path)
            else:
                say(f"[{study.name}] {arm.label}, seed {seed}")
                run = train(cfg, path, resume=True, log=lambda m: None,
                            probe=arm.probe() if arm.probe else None)
            runs.append(run)
            bar.update(sum(len(r.runs) for r in results) + len(runs))
        results.append(ArmResult(arm, runs))
    bar.close()
    findings = study.analyze(results)
    if quick:  # one seed on a small subset: a smoke test of the pipeline, not evidence
        findings.verdict = f"[quick mode: {n_seeds} seed(s), small subset, not conclusive] " \
                           f"{findings.verdict}"
    write_table(findings.rows, out)
    findings.plot(out / "figure.png")
    (out / "verdict").write_text(findings.verdict.strip() + "\n")
    (out / "study.json").write_text(json.dumps({
        "name": study.name, "question": study.question, "quick": quick, "seeds": n_seeds,
        "arms": [{"name": r.arm.name, "label": r.arm.label, "tags": r.arm.tags,
                  "runs": [str(run.path.relative_to(out)) for run in r.runs],
                  "config": r.arm.config.to_dict()} for r in results],
    }, indent=2) + "\n")
    log(f"[{study.name}] {findings.verdict}")
    return findings
