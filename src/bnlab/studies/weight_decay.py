r"""Weight decay on BN's gamma and beta, and on the weights that feed a BN.

A BatchNorm makes the conv/linear weight W before it scale invariant: BN(a W x) = BN(W x) for
a > 0, so the loss L(W) = L(W / ||W||) and its gradient is orthogonal to W and scales as
1 / ||W||. Plain SGD then only grows ||W|| (||W - lr g||^2 = ||W||^2 + lr^2 ||g||^2), and weight
decay (L2, ``W <- (1 - lr wd) W - lr g``) cannot regularize the function at all: it only
shrinks ||W||. What it changes is the step the function sees, the angular step

    lr_eff = lr / ||W||^2,

which weight decay raises (van Laarhoven 2017, "L2 regularization versus batch and weight
normalization"; Zhang et al. 2019, "Three mechanisms of weight decay regularization"). BN's
own gamma and beta are not scale invariant; common recipes leave them (with the biases) out of
weight decay (Jia et al. 2018; He et al. 2019, "Bag of tricks", "no bias decay").

The study is a 2x2 design on LeNet-BN (Fashion-MNIST): decay on gamma/beta on or off
(``no_decay_on_norm``) crossed with decay on the weights before a norm on or off
(``no_decay_before_norm``), every arm with the same ``weight_decay`` on everything else; and
``resnet18-cifar`` on synthetic CIFAR-shaped data with decay on or off for the weights before a
norm. A probe (``bnlab.studies.probes.weight_decay``) records ||W|| of the weights before
each norm (those ``no_decay_before_norm`` spares) and of gamma and beta.

Primary comparisons (one per claim, LeNet-BN, paired over seeds: the arms share seeds and
batches): decay on the weights before a norm shrinks ||W|| (log10 of the final ||W||); it
improves test accuracy (the mechanism, the larger effective step, is not tested: the
effective step is reported, exploratory); decay left off gamma and beta improves test accuracy
(every bias still decays: the recipes' "no bias decay" is tested on the norm layers only).
Each claim's statement says exactly what its comparison tests. Everything else is exploratory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from bnlab.report.figures import new_figure, save
from bnlab.studies.base import Arm, ArmResult, Findings, Study, compare_arms, summarize
from bnlab.studies.claims import Claim, Judgement, exploratory, judge, literature_text
from bnlab.studies.probes.weight_decay import PreNormProbe
from bnlab.studies.stats import Comparison, compare, summary
from bnlab.train import TrainConfig

LENET_DATA = "fashion-mnist"
LENET_LR, LENET_WD = 1.0, 1e-2  # the textbook's plain SGD at lr 1.0
RESNET_LR, RESNET_MOMENTUM, RESNET_WD = 0.1, 0.9, 5e-2
# (decay on gamma/beta, decay on the weights before a norm) -> arm name and label
FACTORS = {(True, True): ("all", "decay on all"),
           (False, True): ("no-norm", "no decay on gamma/beta"),
           (True, False): ("no-pre", "no decay before norm"),
           (False, False): ("neither", "no decay on gamma/beta nor before norm")}


def _factor(base: TrainConfig, on_norm: bool, before_norm: bool) -> TrainConfig:
    return replace(base, no_decay_on_norm=not on_norm, no_decay_before_norm=not before_norm)


def arms(quick: bool) -> list[Arm]:
    lenet = TrainConfig(model="lenet-bn", dataset=LENET_DATA, lr=LENET_LR, batch_size=256,
                        weight_decay=LENET_WD, epochs=1 if quick else 3,
                        limit_train=512 if quick else 6000, limit_test=256 if quick else 2000)
    resnet = TrainConfig(model="resnet18-cifar", dataset="fake-cifar10", lr=RESNET_LR,
                         momentum=RESNET_MOMENTUM, weight_decay=RESNET_WD,
                         batch_size=8 if quick else 16, epochs=1, limit_train=16 if quick else 64,
                         limit_test=16 if quick else 64)
    out = []
    for (on_norm, before), (name, label) in FACTORS.items():
        out.append(Arm(f"lenet-{name}", f"LeNet-BN, {label}", _factor(lenet, on_norm, before),
                       {"net": "lenet-bn", "decay_norm": on_norm, "decay_before": before},
                       probe=partial(PreNormProbe, 1 if quick else 3)))
    for before in (True, False):
        name, label = FACTORS[(True, before)]
        out.append(Arm(f"resnet-{name}", f"ResNet-18, {label}", _factor(resnet, True, before),
                       {"net": "resnet18-cifar", "decay_norm": True, "decay_before": before},
                       probe=partial(PreNormProbe, 1)))
    return out


def last_probe(res: ArmResult, key: str) -> list[float]:
    """Each seed's last probed value of `key` (NaN where the run has no probes)."""
    return [float(r.probes[-1].get(key, math.nan)) if r.probes else math.nan for r in res.runs]


def log_norm(res: ArmResult, key: str = "w_norm") -> list[float]:
    """log10 of each seed's final probed norm (NaN where not finite or not positive)."""
    return [math.log10(v) if math.isfinite(v) and v > 0 else math.nan
            for v in last_probe(res, key)]


def effective_step(res: ArmResult) -> list[float]:
    """Each seed's lr / ||W_l||^2 at the last probe, geometric mean over the weights before a
    norm (NaN without probes)."""
    out = []
    for r in res.runs:
        row = r.probes[-1] if r.probes else {}
        norms = [float(v) for k, v in row.items() if k.startswith("w_norm_")]
        ok = norms and all(math.isfinite(v) and v > 0 for v in norms)
        out.append(r.config.lr * 10 ** (-2 * sum(map(math.log10, norms)) / len(norms))
                   if ok else math.nan)
    return out


def _key(res: ArmResult) -> tuple[str, bool, bool]:
    t = res.arm.tags
    return str(t["net"]), bool(t["decay_norm"]), bool(t["decay_before"])


def table(results: Sequence[ArmResult]) -> list[dict[str, Any]]:
    rows = summarize(results)
    for row, res in zip(rows, results, strict=True):
        for key, name in (("w_norm", "W-norm before norm"), ("gamma_norm", "gamma norm"),
                          ("beta_norm", "beta norm")):
            s = summary(last_probe(res, key))
            row[name], row[f"{name}_std"] = s.mean, s.std
        s = summary(effective_step(res))
        row["lr / W-norm^2"], row["lr / W-norm^2_std"] = s.mean, s.std
    return rows


LENET_ALL, LENET_NO_NORM, LENET_NO_PRE = ("lenet-bn", True, True), ("lenet-bn", False, True), \
    ("lenet-bn", True, False)
W_METRIC = "log10 W-norm before norm"
LARGER = " ('better': larger)"  # a norm is not better or worse: the table's word means larger
CLAIMS = (
    Claim("decay-shrinks-w", "Weight decay on the weights before a BN shrinks their norm.",
          "van Laarhoven 2017", W_METRIC, -1, 0.02,
          a=FACTORS[(True, False)][1], b=FACTORS[(True, True)][1]),
    Claim("decay-before-norm-helps", "Weight decay on the weights before a BN improves test "
          "accuracy.",
          "Zhang et al. 2019", "test_acc", +1, 0.01,
          a=FACTORS[(True, False)][1], b=FACTORS[(True, True)][1]),
    Claim("no-decay-on-gamma-beta", "Leaving BN's gamma and beta out of weight decay (every "
          "bias still decays) improves test accuracy.",
          "He et al. 2019", "test_acc", +1, 0.01,
          a=FACTORS[(True, True)][1], b=FACTORS[(False, True)][1]),
)
# which arms each claim compares: (a, b)
CLAIM_ARMS = {"decay-shrinks-w": (LENET_NO_PRE, LENET_ALL),
              "decay-before-norm-helps": (LENET_NO_PRE, LENET_ALL),
              "no-decay-on-gamma-beta": (LENET_ALL, LENET_NO_NORM)}


def _values(res: ArmResult, metric: str) -> list[float]:
    return log_norm(res) if metric == W_METRIC else res.finals(metric)


def primary(results: Sequence[ArmResult]) -> list[Judgement]:
    """The declared claims (``CLAIMS``), judged together (``claims.judge``); a claim whose
    arms did not run is left out."""
    by = {_key(r): r for r in results}
    rows = []
    for claim in CLAIMS:
        a, b = (by.get(k) for k in CLAIM_ARMS[claim.key])
        if a is not None and b is not None:
            rows.append((claim, _values(a, claim.metric), _values(b, claim.metric),
                         a.paired_with(b)))
    return judge(rows, family=len(CLAIMS))


def exploratory_comparisons(results: Sequence[ArmResult]) -> list[Comparison]:
    """Every other comparison, its own Holm family: per network, each arm against decay on
    all on test accuracy, log10 ||W|| before norm and log10 ||gamma||."""
    by = {_key(r): r for r in results}
    out = []
    for net in dict.fromkeys(k[0] for k in by):
        ref = by.get((net, True, True))
        if ref is None:
            continue
        for key, res in by.items():
            if key[0] != net or res is ref:
                continue
            label = f"{res.arm.label} vs {ref.arm.label}"
            out.append(compare_arms(ref, res, "test_acc", label))
            for probe_key, metric in (("w_norm", W_METRIC + LARGER),
                                      ("gamma_norm", "log10 gamma norm" + LARGER)):
                out.append(compare(log_norm(ref, probe_key), log_norm(res, probe_key),
                                   metric=metric, label=label, paired=ref.paired_with(res)))
    return exploratory(out)


def verdict_text(results: Sequence[ArmResult], explored: Sequence[Comparison]) -> str:
    """The exploratory part of the verdict (the claims' wording is put before it by the
    runner): each arm against decay on all, per network, on the W-norm and test accuracy."""
    parts = [f"{c.label}: {c.metric.removesuffix(LARGER)} {c.diff_text()}, {_word(c)}"
             for c in explored if c.metric in (W_METRIC + LARGER, "test_acc")]
    if not parts:
        return "Exploratory: nothing to compare (fewer than two arms of a network ran)."
    return ("Exploratory (every arm against decay on all, per network; paired t over seeds, "
            "its own Holm family, not verdicts on the literature): " + "; ".join(parts) + ".")


def _word(c: Comparison) -> str:
    """'larger'/'smaller' for a norm (never 'better'), the comparison's word otherwise."""
    if not c.metric.endswith(LARGER) or not c.clear:
        return c.word
    return "larger" if c.diff > 0 else "smaller"


def literature(judged: Sequence[Judgement]) -> str:
    if not judged:
        return "Not testable: the LeNet-BN arms did not run."
    return literature_text(judged) + "."


def headline(results: Sequence[ArmResult]) -> str:
    by = {_key(r): r for r in results}
    parts = []
    for key in (LENET_ALL, LENET_NO_PRE, LENET_NO_NORM):
        res = by.get(key)
        if res is not None:
            parts.append(f"{res.arm.label}: test acc {res.summary('test_acc').text()}, "
                         f"||W|| before norm {summary(last_probe(res, 'w_norm')).text()}")
    return "; ".join(parts) + "." if parts else ""


def analyze(results: list[ArmResult]) -> Findings:
    rows = table(results)
    judged = primary(results)
    explored = exploratory_comparisons(results)

    def plot(path: Path) -> None:
        nets = list(dict.fromkeys(_key(r)[0] for r in results))
        fig, axes = new_figure(len(nets), 3, figsize=(15, 3.8 * len(nets)), squeeze=False)
        for row, net in zip(axes, nets, strict=True):
            mine = [r for r in results if _key(r)[0] == net]
            for res in mine:
                for ax, key in zip(row[:2], ("w_norm", "gamma_norm"), strict=True):
                    steps = [p["step"] for p in res.runs[0].probes]
                    curves = [[float(p[key]) for p in r.probes] for r in res.runs]
                    n = min(len(c) for c in curves) if curves else 0
                    # dashed: gamma/beta not decayed (arms that share a curve stay visible)
                    ax.plot(steps[:n], [summary([c[i] for c in curves]).mean
                                        for i in range(n)], label=res.arm.label,
                            linestyle="-" if res.arm.tags["decay_norm"] else "--")
            accs = [r.summary("test_acc") for r in mine]
            row[2].bar(range(len(mine)), [s.mean for s in accs],
                       yerr=[s.std if math.isfinite(s.std) else 0.0 for s in accs], capsize=3)
            row[2].set_xticks(range(len(mine)), [r.arm.label.split(", ", 1)[-1] for r in mine],
                              rotation=15, ha="right", fontsize=7)
            for ax, title in zip(row, (f"{net}: W-norm before norm", f"{net}: gamma norm",
                                       f"{net}: final test accuracy"), strict=True):
                ax.set_title(title)
                ax.grid(alpha=0.3)
            for ax in row[:2]:
                ax.set_xlabel("step")
                ax.legend(fontsize=7)
        n_seeds = len(results[0].runs) if results else 0
        save(fig, path, f"Weight decay on norm layers and the weights before them (mean over "
                        f"{n_seeds} seed{'s' if n_seeds != 1 else ''})")

    return Findings(rows, verdict_text(results, explored), plot, explored, headline(results),
                    literature(judged), judged)


SETUP = (
    "LeNet-BN (sigmoid) on Fashion-MNIST, plain SGD at lr 1.0, batch 256, 3 epochs over the "
    "first 6,000 training examples (72 steps), tested on 2,000 test examples; weight decay "
    "1e-2 (L2), so lr * wd * steps is 0.72 and decay can move ||W|| within the run. A 2x2 "
    "design: decay on BN's gamma and beta on or off (--no-decay-on-norm), crossed with decay on "
    "the weights before a norm on or off (--no-decay-before-norm); the output layer and every "
    "bias always decay. ResNet-18 (CIFAR variant) on synthetic CIFAR-shaped data "
    "(fake-cifar10), SGD lr 0.1 with momentum 0.9, weight decay 5e-2, batch 16, 4 steps over "
    "64 examples, tested on 64: decay before norm on or off, gamma and beta decayed. A probe "
    "records, every 3 steps (LeNet) or every step (ResNet), before the step's update, the L2 "
    "norm of the weights before each norm (the weights --no-decay-before-norm spares, from the "
    "fx dataflow) and of gamma and beta. Every arm of a seed shares its initial weights and "
    "batches, so comparisons are paired, over 7 seeds: the fewest at which the exact sign-flip "
    "test can pass Holm over three claims (3 * 2 / 2^7 = 0.047 < 0.05). Primary claims, "
    "declared before the runs: decay before norm shrinks ||W|| (log10 of the last probed "
    "norm, margin 0.02, van Laarhoven 2017); it improves test accuracy (margin 0.01, Zhang et "
    "al. 2019); no decay on gamma/beta improves test accuracy (margin 0.01, He et al. 2019). "
    "Exploratory: every arm against decay on all, per network.")

CAVEATS = (
    "Short runs: 72 LeNet steps and 4 ResNet steps, sized so that the study takes minutes on "
    "two CPU threads. The effective-learning-rate mechanism acts over the equilibrium time "
    "1 / (lr * wd) steps (100 here for LeNet), about the length of the run, so the accuracy "
    "claims are tested far from the regime of the papers (long ImageNet-scale training). The "
    "ResNet arms train 4 steps on synthetic data and sit near chance: they show the mechanism "
    "on ||W|| only, never an accuracy effect. The last probe is taken before the last step's "
    "update. One weight decay per network; the effect on accuracy depends on it.")

STUDY = Study("weight-decay-on-norm", "What does weight decay on BN's gamma and beta, and on "
              "the weights that feed a BN, change?", arms, analyze, seeds=7,
              needs="it trains two of bnlab's networks (LeNet-BN, ResNet-18), each on its own data",
              setup=SETUP, caveats=CAVEATS)
