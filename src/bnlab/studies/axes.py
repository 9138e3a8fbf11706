"""Which axes should be averaged? Per-channel BN vs per-activation BN vs Layer/Instance/Group.

The seed notes ask why a convolution's BatchNorm averages over (N, H, W) per channel instead
of over the batch only (one mean per (C, H, W) position). The same LeNet is trained with each
member of the normalization-axes family (instance norm on the convolutions only: the linear
layers have no spatial axes, so BN stays there). Each layer is compared with per-channel BN on
the fair test accuracy (with the running averages and with PreciseBN statistics; a layer
without running statistics counts its plain accuracy for both), paired over seeds, Holm over
all the study's comparisons (``bnlab.studies.stats``).
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
from bnlab.studies.stats import Comparison, holm
from bnlab.studies.wording import disagreement, fair_word
from bnlab.train import TrainConfig

BASELINE = "bnlab"
NORMS = {"none": "no norm", "bnlab": "BN (per channel)",
         "per-activation": "BN (per activation)", "layer": "LayerNorm", "group": "GroupNorm",
         "instance-conv": "InstanceNorm (conv) + BN (linear)"}
# The members of the family Wu & He (2018) compare with BN (their Figure 1 / Table 1).
WU_HE = ("layer", "group", "instance-conv")


def arms(quick: bool) -> list[Arm]:
    base = TrainConfig(model="lenet-bn", epochs=1 if quick else 4, lr=1.0,
                       limit_train=2048 if quick else 30000, limit_test=1000 if quick else 10000)
    return [Arm(norm, label, TrainConfig(**{**base.to_dict(), "norm": norm}), {"norm": norm})
            for norm, label in NORMS.items()]


def literature(tests: dict[str, tuple[Comparison, ...]]) -> str:
    """Whether LN, IN and GN trail per-channel BN, as in Wu & He (2018) at a normal batch.
    `tests`: each layer's comparisons with BN, running averages first, then PreciseBN's where
    both arms have it.
    A layer is behind (or ahead) only when both evaluations say so; "agrees" needs every one
    of LN, GN and IN clearly behind."""
    paper = ("Wu & He 2018 (Group Normalization), where at 32 images per batch BN is ahead "
             "of GN, LN and IN")
    present = [n for n in WU_HE if n in tests]
    if not present:
        return f"not comparable with {paper}: none of LN, IN, GN ran"
    if not all(c.testable for n in present for c in tests[n]):
        return f"cannot be tested against {paper}: " + tests[present[0]][0].word
    fair = {n: fair_word(tests[n]) for n in present}
    ahead = [NORMS[n] for n in present if fair[n] == "better"]
    behind = [NORMS[n] for n in present if fair[n] == "worse"]
    split = [f"{NORMS[n]}: {fair[n]}" for n in present if fair[n].startswith("the two")]
    tied = [NORMS[n] for n in present if fair[n] == "no clear difference"]
    missing = [NORMS[n] for n in WU_HE if n not in tests]
    detail = "; ".join(part for part in (
        f"clearly behind BN: {', '.join(behind)}" if behind else "",
        f"no clear difference from BN (not shown equal): {', '.join(tied)}" if tied else "",
        "; ".join(split),
        f"did not run: {', '.join(missing)}" if missing else "") if part)
    if ahead:
        return (f"does not reproduce {paper}: {', '.join(ahead)} clearly ahead of per-channel "
                f"BN" + (f" ({detail})" if detail else ""))
    if not behind:
        return f"does not reproduce {paper} at this scale: {detail}"
    if len(behind) == len(WU_HE):
        return f"agrees with {paper}: each of them is clearly behind per-channel BN ({detail})"
    return (f"partly agrees with {paper}: clearly behind per-channel BN are only "
            f"{', '.join(behind)} ({detail})")


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    by = {r.arm.name: r for r in results}
    base = by[BASELINE]
    others = [r for r in results if r.arm.name != BASELINE]
    groups = [accuracy_comparisons(base, r, f"{r.arm.label} vs {base.arm.label}")
              for r in others]
    tests = holm([c for g in groups for c in g])
    corrected = iter(tests)  # back into each arm's group, whatever its size
    pairs = {r.arm.name: tuple(next(corrected) for _ in g)
             for r, g in zip(others, groups, strict=True)}
    n = len(base.runs)
    parts = [f"{r.arm.label}: {accuracy_text(*pairs[r.arm.name])}" for r in others]
    verdict = (f"Against {base.arm.label} ({base.summary('test_acc').text()} test accuracy; "
               f"paired t over {n} seed(s), Holm-corrected, 'better'/'worse' need p < 0.05): "
               + "; ".join(parts) + ".")
    # the fair accuracy: 'worse'/'better' only when both evaluations say it
    words = {r.arm.label: fair_word(pairs[r.arm.name]) for r in others}
    worse = [k for k, w in words.items() if w == "worse"]
    better = [k for k, w in words.items() if w == "better"]
    split = [f"{r.arm.label} ({disagreement(pairs[r.arm.name])})" for r in others
             if words[r.arm.label].startswith("the two")]
    headline = (f"{base.arm.label} {base.summary('test_acc').text()} test accuracy; clearly "
                f"worse (running averages and PreciseBN): {', '.join(worse) or 'none'}; "
                f"clearly better: {', '.join(better) or 'none'}"
                + (f"; the two evaluations disagree: {', '.join(split)}" if split else "")
                + f" ({n} seed{'s' if n != 1 else ''})")

    def plot(path: Path) -> None:
        plot_accuracy_and_loss(
            rows, path, f"Which axes to average over (LeNet, Fashion-MNIST; mean +- sample "
            f"std, {n} seed{'s' if n != 1 else ''})")

    return Findings(rows, verdict, plot, tests, headline, literature(pairs))


STUDY = Study(
    "axes", "Which axes should be averaged over?", arms, analyze,
    needs="its analysis compares every member of the norm family on LeNet-BN",
    setup="LeNet-BN on Fashion-MNIST (the first 30k training examples, the 10k test set), "
    "batch 256, plain SGD at lr 1.0, 4 epochs, 5 seeds (seed s of every arm sees the same "
    "initial data order). The normalization layer is swapped for each member of the family: "
    "none, BN per channel (over N, H, W), BN per activation (over N only), LayerNorm, "
    "GroupNorm, and InstanceNorm on the convolutions with BN on the linear layers. Measured: "
    "the final test accuracy with the running averages and with PreciseBN statistics "
    "(10^4 training examples; layers without running statistics count their plain accuracy "
    "for both), and the final train loss. Verdict: each layer against per-channel BN by a "
    "paired t-test over seeds on both accuracies, Holm-corrected over the study's "
    "comparisons.",
    caveats="A 4-epoch run at one learning rate (BN's lr 1.0, not tuned per layer), batch 256 "
    "on a subset: layers that need a smaller lr or more epochs are at a disadvantage, and "
    "Wu & He's finding is for ResNet-50 on ImageNet at 32 images per batch, where the gaps "
    "are under two points. The instance-norm arm keeps BN on the linear layers, so it is not "
    "pure InstanceNorm. The no-norm arm at lr 1.0 may fail to train: a failed seed is counted "
    "as such, not excluded.")
