"""Which axes should be averaged? Per-channel BN vs per-activation BN vs Layer/Instance/Group.

The seed notes ask why a convolution's BatchNorm averages over (N, H, W) per channel instead
of over the batch only (one mean per (C, H, W) position). The same LeNet is trained with each
member of the normalization-axes family (instance norm on the convolutions only: the linear
layers have no spatial axes, so BN stays there). Each layer is compared with per-channel BN on
the fair test accuracy (with the running averages and with PreciseBN statistics; a layer
without running statistics counts its plain accuracy for both), paired over seeds. The primary
comparisons are Wu & He's claims (LN, GN and IN behind BN in test accuracy, ``CLAIMS``), Holm
over those three; every other comparison is exploratory (``bnlab.studies.claims``).
"""

from __future__ import annotations

from pathlib import Path

from bnlab.report.figures import plot_accuracy_and_loss
from bnlab.studies.base import (
    Arm,
    ArmResult,
    Findings,
    Study,
    accuracy_comparisons,
    accuracy_text,
    summarize,
)
from bnlab.studies.claims import Claim, exploratory, judge, literature_text
from bnlab.studies.wording import disagreement, fair_word
from bnlab.train import TrainConfig

BASELINE = "bnlab"
NORMS = {"none": "no norm", "bnlab": "BN (per channel)",
         "per-activation": "BN (per activation)", "layer": "LayerNorm", "group": "GroupNorm",
         "instance-conv": "InstanceNorm (conv) + BN (linear)"}
# The members of the family Wu & He (2018) compare with BN (their Figure 1 / Table 1).
WU_HE = ("layer", "group", "instance-conv")
# One claim per layer Wu & He compare (``bnlab.studies.claims``): at a normal batch each is
# behind per-channel BN in test accuracy (their gaps: GN 0.5, LN 1.7, IN 4.8 points on
# ImageNet). Margin: half a point of test accuracy. Per-activation BN and no norm: exploratory.
PAPER = "Wu & He 2018"
CLAIMS = {norm: Claim(f"{norm}-behind-bn", f"At a normal batch size {NORMS[norm]} reaches a lower "
                      f"test accuracy than per-channel BN", PAPER, "test_acc", -1, 0.005,
                      NORMS[BASELINE], NORMS[norm]) for norm in WU_HE}


def arms(quick: bool) -> list[Arm]:
    base = TrainConfig(model="lenet-bn", epochs=1 if quick else 4, lr=1.0,
                       limit_train=2048 if quick else 30000, limit_test=1000 if quick else 10000)
    return [Arm(norm, label, TrainConfig(**{**base.to_dict(), "norm": norm}), {"norm": norm})
            for norm, label in NORMS.items()]


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    by = {r.arm.name: r for r in results}
    base = by[BASELINE]
    others = [r for r in results if r.arm.name != BASELINE]
    claimed = [r for r in others if r.arm.name in CLAIMS]
    primary = judge([(CLAIMS[r.arm.name], base.finals("test_acc"), r.finals("test_acc"),
                      base.paired_with(r)) for r in claimed], family=len(CLAIMS))
    judged = {r.arm.name: j for r, j in zip(claimed, primary, strict=True)}
    groups = [accuracy_comparisons(base, r, f"{r.arm.label} vs {base.arm.label}")
              for r in others]
    # the claims' running-average accuracy is primary; everything else is exploratory
    rest = [[c for c in g if not (r.arm.name in judged and c.metric == "test_acc")]
            for r, g in zip(others, groups, strict=True)]
    tests = exploratory([c for g in rest for c in g])
    corrected = iter(tests)  # back into each arm's exploratory group, whatever its size
    pairs = {r.arm.name: tuple(next(corrected) for _ in g)
             for r, g in zip(others, rest, strict=True)}
    n = len(base.runs)

    def said(r: ArmResult) -> str:
        if r.arm.name not in judged:
            return accuracy_text(*pairs[r.arm.name])
        j = judged[r.arm.name]
        return (f"[{j.claim.key}] {j.text()}"
                + "".join(f"; exploratory, with PreciseBN statistics {c.text()}"
                          for c in pairs[r.arm.name]))

    parts = [f"{r.arm.label}: {said(r)}" for r in others]
    verdict = (f"Against {base.arm.label} ({base.summary('test_acc').text()} test accuracy; "
               f"paired t over {n} seed{'' if n == 1 else 's'}; the claims are judged by the "
               f"one rule, every other comparison is exploratory, Holm over its own family, "
               f"'better'/'worse' at p < 0.05): " + "; ".join(parts) + ".")
    # exploratory: 'worse'/'better' only when every exploratory evaluation of the arm says it
    words = {r.arm.label: fair_word(pairs[r.arm.name]) for r in others if pairs[r.arm.name]}
    worse = [k for k, w in words.items() if w == "worse"]
    better = [k for k, w in words.items() if w == "better"]
    split = [f"{r.arm.label} ({disagreement(pairs[r.arm.name])})" for r in others
             if words.get(r.arm.label, "").startswith("the two")]
    headline = (f"{base.arm.label} {base.summary('test_acc').text()} test accuracy; "
                f"{PAPER}'s claims: " + ", ".join(f"{j.claim.b} behind BN: {j.wording}"
                                                  for j in primary)
                + f"; exploratory, clearly worse: {', '.join(worse) or 'none'}; "
                f"clearly better: {', '.join(better) or 'none'}"
                + (f"; the two evaluations disagree: {', '.join(split)}" if split else "")
                + f" ({n} seed{'s' if n != 1 else ''})")

    def plot(path: Path) -> None:
        plot_accuracy_and_loss(
            rows, path, f"Which axes to average over (LeNet, Fashion-MNIST; mean +- sample "
            f"std, {n} seed{'s' if n != 1 else ''})")

    return Findings(rows, verdict, plot, tests, headline, literature_text(primary), primary)


STUDY = Study(
    "axes", "Which axes should be averaged over?", arms, analyze,
    needs="its analysis compares every member of the norm family on LeNet-BN",
    setup="LeNet-BN on Fashion-MNIST (the first 30k training examples, the 10k test set), "
    "batch 256, plain SGD at lr 1.0, 4 epochs, 8 seeds (seed s of every arm sees the same "
    "initial data order). The normalization layer is swapped for each member of the family: "
    "none, BN per channel (over N, H, W), BN per activation (over N only), LayerNorm, "
    "GroupNorm, and InstanceNorm on the convolutions with BN on the linear layers. Measured: "
    "the final test accuracy with the running averages and with PreciseBN statistics "
    "(10^4 training examples; layers without running statistics count their plain accuracy "
    "for both), and the final train loss. Verdict: each layer against per-channel BN by a "
    "paired t-test over seeds on both accuracies. Primary comparisons, one per claim of Wu & "
    "He (2018): LayerNorm, GroupNorm and InstanceNorm each behind per-channel BN in test "
    "accuracy (running averages), margin 0.005, Holm over those three, worded by the one rule "
    "(with the exact sign-flip test below 8 seeds); everything else is exploratory.",
    caveats="A 4-epoch run at one learning rate (BN's lr 1.0, not tuned per layer), batch 256 "
    "on a subset: layers that need a smaller lr or more epochs are at a disadvantage, and "
    "Wu & He's finding is for ResNet-50 on ImageNet at 32 images per batch, where the gaps "
    "are under two points. The instance-norm arm keeps BN on the linear layers, so it is not "
    "pure InstanceNorm. The no-norm arm at lr 1.0 may fail to train: a failed seed is counted "
    "as such, not excluded.")
