"""Arms at chance: a floor, not an effect.

An arm is *at chance* when most of its seeds failed by ``stats``' rule: the final train loss
is not finite, or the final test accuracy with the running averages is at most
``stats.FAILED_ACCURACY`` (a uniform guess over 10 classes scores 0.10). A difference from
an arm at chance measures the floor the arm sits on, not what its normalization does, so two
rules hold wherever a study uses them (``floor``):

* two arms both at chance are not compared;
* an arm at chance is never a *reference* (the arm another is measured from): a "drop" from
  chance reads as a gain.

An arm at chance that is not the reference is compared: its failure is the effect measured
(running averages that never train, against BN that does).

A comparison not made never enters the exploratory Holm family; a declared claim not judged
for it still counts in the primary family's m, as p = 1 (``claims.judge_keyed``), and is
listed in the record's ``not_judged`` with the reason ``floor`` returns, which every text's
claims part names (``claims.not_judged_text``).
"""

from __future__ import annotations

import math

from bnlab.studies.base import ArmResult
from bnlab.studies.stats import FAILED_ACCURACY

__all__ = ["CHANCE_METRIC", "at_chance", "floor"]

CHANCE_METRIC = "test_acc"  # running averages: what the papers evaluate with


def at_chance(res: ArmResult) -> bool:
    """Most of the arm's seeds failed: diverged, or never beat chance on test accuracy with
    the running averages (``CHANCE_METRIC``)."""
    failed = sum(1 for loss, acc in zip(res.finals("train_loss"), res.finals(CHANCE_METRIC),
                                        strict=True)
                 if not math.isfinite(loss) or acc <= FAILED_ACCURACY)
    return 2 * failed > len(res.runs)


def floor(a: ArmResult, b: ArmResult, *, reference: bool) -> str:
    """Why `b` is not compared with `a`: both at chance, or (`reference`: `a` is what `b` is
    measured from) `a` at chance; '' when the comparison stands."""
    if at_chance(a) and at_chance(b):
        return "both at chance"
    return f"its reference ({a.arm.label}) at chance" if reference and at_chance(a) else ""
