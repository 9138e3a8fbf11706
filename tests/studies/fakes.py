"""Synthetic arm results for testing a study's analysis without training: a fake run has the
three things an analysis reads (``config``, ``metrics``, ``final``)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bnlab.studies.base import Arm, ArmResult
from bnlab.train import TrainConfig


@dataclass
class FakeRun:
    config: TrainConfig
    metrics: list[dict[str, Any]]
    probes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1]


@dataclass
class FinalRun:
    """A run known by its final metrics alone (one epoch), with its probes."""

    config: TrainConfig
    final: dict[str, float]
    probes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metrics(self) -> list[dict[str, float]]:
        return [self.final]

    def has(self, key: str) -> bool:
        return key in self.final


def results(arms: list[Arm], seeds: int,
            curve: Callable[[Arm, int, float], list[dict[str, Any]]]) -> list[ArmResult]:
    """One ArmResult per arm; `curve(arm, seed, noise)` gives the seed's per-epoch metrics.
    `noise` is shared by seed s of every arm (as a shared batch order makes it) plus a little
    of the arm's own, with mean 0 over seeds: paired differences have a spread, and arms that
    differ by nothing else have exactly equal means."""
    shared = [random.Random(s).gauss(0, 1) for s in range(seeds)]
    out = []
    for i, arm in enumerate(arms):
        rng = random.Random(1000 + i)
        own = [rng.gauss(0, 1) for _ in range(seeds)]
        own = [v - sum(own) / seeds for v in own]
        runs = [FakeRun(replace(arm.config, seed=s), curve(arm, s, shared[s] + 0.3 * own[s]))
                for s in range(seeds)]
        out.append(ArmResult(arm, runs))  # type: ignore[arg-type]
    return out


def record(name: str, findings: Any) -> dict[str, Any]:
    """The comparisons of `findings` as study.json stores them, through JSON (NaN as null)."""
    text = json.dumps({"name": name, "primary": [j.record() for j in findings.primary],
                       "exploratory": [c.record() for c in findings.exploratory]})
    return json.loads(text.replace("NaN", "null"))  # type: ignore[no-any-return]
