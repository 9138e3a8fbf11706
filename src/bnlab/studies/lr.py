"""Why can the learning rate go up with BN? A learning-rate sweep with and without BN.

The same LeNet (the BN chapter's, sigmoid) is trained with plain SGD at log-spaced learning
rates, once without normalization and once with bnlab's BatchNorm. Ioffe & Szegedy (2015)
trained their BN networks at 5x and 30x the base rate; Bjorck et al. (2018) argue BN's benefit
is mostly this larger usable rate.

Each seed is judged on **its own curve** (per-epoch train loss L_e, e = 1..E, and its final
test accuracy a; for BN the PreciseBN accuracy, the weights' own, where recorded). Chance is
the loss of a uniform guess over 10 classes, ln 10 = 2.303, and accuracy 0.10:

* **diverged**: L_e is not finite at any epoch (``bnlab.studies.stats``' rule, which the
  table's ``diverged`` column counts on the final loss; a NaN loss never enters a comparison).
* **blew up**: every L_e finite, but the final L_E > ln 10 + DIVERGED_MARGIN. A loss above the
  uniform guess's means confidently wrong outputs, which only blown-up weights give; 0.5 is
  far above the seed-to-seed spread of a network at chance (< 0.05).
* **stuck** on the plateau: not diverged or blown up, L_E >= ln 10 - PLATEAU_MARGIN *and*
  a <= 0.15 (stats' chance bar): the sigmoid LeNet without BN starts on a plateau at chance
  loss and leaves it only after enough steps. A seed whose accuracy already beats chance
  while the epoch-averaged loss still sits near 2.3 is leaving the plateau: it trains.
* **trains**: otherwise.

The claim is about a *higher* rate, so the sweep is split at the chapter's own rate for its BN
LeNet, ``BASE_LR`` = 1: the **high end** is every swept rate above it, the **low end** every
rate below it. At the low end the network without BN sits on the sigmoid plateau because its
steps are too small, which says nothing about how high a rate BN tolerates; the two ends are
judged separately, and only the high end against the literature.

The **primary comparison** (``HIGH_END``, ``bnlab.studies.claims``): per seed s, the share
h_s = (high-end rates at which seed s trains) / (high-end rates), with BN and without; BN
against no BN paired by seed (seed s of both arms sees the same batches at every rate). The
claim's wording comes from ``claims.judge`` (t-test and exact sign-flip test, TOST against
+-``HIGH_END.margin``). Everything else is exploratory, one Holm family of its own: the same
share at the low end, and where both normalizations train on every seed, final train loss and
test accuracy (running averages and PreciseBN), paired t over seeds. The seeds that train at
each rate are counted, not tested one rate at a time (the per-seed shares use them all). The
setup text (``SETUP``) is built from the same constants the code uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnlab.report.figures import new_figure, save
from bnlab.studies.base import (
    Arm,
    ArmResult,
    Findings,
    Study,
    accuracy_comparisons,
    accuracy_text,
    compare_arms,
    ran_on,
    summarize,
)
from bnlab.studies.claims import Claim, Judgement, exploratory, judge, literature_text
from bnlab.studies.stats import FAILED_ACCURACY, Comparison, compare
from bnlab.train import TrainConfig

LRS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
QUICK_LRS = (0.1, 1.0, 10.0)
BASE_LR = 1.0  # the chapter's rate for its LeNet with BN: the high end is above it
NORMS = {"none": "no BN", "bnlab": "BN"}
CHANCE_LOSS = math.log(10)
DIVERGED_MARGIN = 0.5  # final loss above ln 10 + this: blown up
PLATEAU_MARGIN = 0.1  # final loss within this of ln 10 (and accuracy at chance): stuck
STATES = ("trains", "stuck", "blew up", "diverged")
HIGH = "share of high-end rates trained"  # per seed: the primary comparison's metric
LOW = "share of low-end rates trained"
SEEDS = 8  # paired primaries: from 8 seeds the t-test decides alone (claims.EXACT_BELOW)

HIGH_END = Claim(
    key="higher-lr-high-end",
    statement="With BN a network trains at higher learning rates than without it",
    source="Ioffe & Szegedy 2015; Bjorck et al. 2018", metric=HIGH, direction=+1,
    # a quarter of the high-end rates: e.g. one more of two rates on every second seed
    margin=0.25, a="no BN", b="BN")


def arms(quick: bool) -> list[Arm]:
    lrs = QUICK_LRS if quick else LRS
    # The full training set: the sigmoid LeNet without BN needs about one epoch to leave its
    # initial plateau at a moderate learning rate.
    base = TrainConfig(model="lenet-bn", epochs=1 if quick else 2,
                       limit_train=2048 if quick else None, limit_test=1000 if quick else 5000)
    return [Arm(f"{norm}-lr{lr:g}", f"{NORMS[norm]}, lr {lr:g}",
                TrainConfig(**{**base.to_dict(), "norm": norm, "lr": lr}),
                {"norm": norm, "lr": lr})
            for norm in NORMS for lr in lrs]


def classify(losses: Sequence[float], accuracy: float) -> str:
    """One seed's state from its per-epoch train losses and final test accuracy (docstring)."""
    if not losses or any(not math.isfinite(v) for v in losses):
        return "diverged"
    if losses[-1] > CHANCE_LOSS + DIVERGED_MARGIN:
        return "blew up"
    if losses[-1] >= CHANCE_LOSS - PLATEAU_MARGIN and accuracy <= FAILED_ACCURACY:
        return "stuck"
    return "trains"


def states(res: ArmResult) -> list[str]:
    """Each seed's state; the accuracy is PreciseBN's where the run recorded it."""
    out = []
    for run in res.runs:
        rows = run.metrics
        final = rows[-1] if rows else {}
        acc = float(final.get("test_acc_precise", final.get("test_acc", math.nan)))
        out.append(classify([float(r.get("train_loss", math.nan)) for r in rows], acc))
    return out


def ends(swept: Sequence[float]) -> tuple[list[float], list[float]]:
    """The swept rates below ``BASE_LR`` (low end) and above it (high end)."""
    return [v for v in swept if v < BASE_LR], [v for v in swept if v > BASE_LR]


def shares(seed_states: dict[float, list[str]], rates: Sequence[float]) -> list[float]:
    """Per seed: the share of `rates` at which that seed trains (its states at each rate)."""
    n = min(len(seed_states[v]) for v in rates)
    return [sum(seed_states[v][s] == "trains" for v in rates) / len(rates) for s in range(n)]


def _span(lrs: list[float], swept: list[float]) -> str:
    """The learning rates as runs of neighbours in the sweep: '0.03 to 0.3, 3 to 10'; 'none'
    when empty."""
    if not lrs:
        return "none"
    idx = sorted(swept.index(v) for v in lrs)
    runs: list[list[int]] = [[idx[0]]]
    for i in idx[1:]:
        if i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{swept[r[0]]:g}" if len(r) == 1 else f"{swept[r[0]]:g} to {swept[r[-1]]:g}"
                     for r in runs)


def _counts(seed_states: list[str]) -> str:
    return ", ".join(f"{seed_states.count(s)} {s}" for s in STATES if s in seed_states)


def _rates(rates: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in rates)


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    by = {(r.arm.tags["norm"], r.arm.tags["lr"]): r for r in results}
    ran = [n for n in NORMS if any(k[0] == n for k in by)]  # a user's net: maybe BN only
    swept = sorted({k[1] for k in by})
    seed_states = {k: states(r) for k, r in by.items()}
    for row, res in zip(rows, results, strict=True):
        st = seed_states[(res.arm.tags["norm"], res.arm.tags["lr"])]
        row["seeds trained"] = f"{st.count('trains')}/{len(st)}"
        row["seed states (own curve)"] = _counts(st)
    usable = {n: [lr for lr in swept if (n, lr) in by
                  and all(s == "trains" for s in seed_states[(n, lr)])] for n in ran}
    both = [lr for lr in swept if all(lr in usable[n] for n in NORMS)] if len(ran) == 2 else []
    low, high = ends(swept)
    primary: list[Judgement] = []
    keyed: list[tuple[tuple[float, str], Comparison]] = []
    if len(ran) == 2:
        per = {n: {lr: seed_states[(n, lr)] for lr in swept} for n in NORMS}
        paired = all(by[("none", lr)].paired_with(by[("bnlab", lr)]) for lr in swept)
        if high:
            primary = judge([(HIGH_END, shares(per["none"], high), shares(per["bnlab"], high),
                              paired)])
        if low:
            keyed.append(((-math.inf, LOW), compare(
                shares(per["none"], low), shares(per["bnlab"], low), metric=LOW,
                label=f"low end (lr {_rates(low)}): BN vs no BN", paired=paired)))
    for lr in both:
        off, on = by[("none", lr)], by[("bnlab", lr)]
        keyed.append(((lr, "train_loss"), compare_arms(
            off, on, "train_loss", f"lr {lr:g}: BN vs no BN", higher_is_better=False)))
        keyed += [((lr, c.metric), c)
                  for c in accuracy_comparisons(off, on, f"lr {lr:g}: BN vs no BN")]
    tested = exploratory([c for _, c in keyed])
    t = {k: c for (k, _), c in zip(keyed, tested, strict=True)}
    n_seeds = max(len(r.runs) for r in results)
    words = {"none": "without BN", "bnlab": "with BN"}
    verdict = ("Learning rates at which every seed trains (not diverged, blown up or stuck on "
               "the chance plateau; see the setup): "
               + "; ".join(f"{words[n]} {_span(usable[n], swept)}" for n in ran) + ".")
    if primary:
        verdict += (f" The claim's values, the high end (lr {_rates(high)}, above the "
                    f"chapter's {BASE_LR:g}): per seed the share of those rates at which it "
                    f"trains, {_seed_shares(primary[0].comparison)}.")
    if (-math.inf, LOW) in t:
        c = t[(-math.inf, LOW)]
        verdict += (f" Exploratory (Holm over the exploratory family; no verdict on the "
                    f"claim): the low end (lr {_rates(low)}, where no BN's small steps leave it "
                    f"on the sigmoid plateau), per seed share that trains, "
                    f"{_seed_shares(c)}: {c.text()}")
        counts = [f"lr {lr:g}: {seed_states[('bnlab', lr)].count('trains')}/"
                  f"{len(seed_states[('bnlab', lr)])} with BN vs "
                  f"{seed_states[('none', lr)].count('trains')}/"
                  f"{len(seed_states[('none', lr)])} without" for lr in swept]
        verdict += ("; seeds that train at each rate (counts, not tested): "
                    + "; ".join(counts) + ".")
    if len(ran) == 2:
        per_lr = [f"lr {lr:g}: train loss {t[(lr, 'train_loss')].text()}, "
                  f"{accuracy_text(t[(lr, 'test_acc')], t.get((lr, 'test_acc_precise')))}"
                  for lr in both]
        verdict += (" Exploratory, BN vs no BN where both train (paired t over seeds): "
                    + ("; ".join(per_lr) if per_lr else "no learning rate where both train")
                    + ".")
    headline, literature = _summary(usable, ran, swept, t, both, primary, high)

    def plot(path: Path) -> None:
        _plot(rows, ran, path, n_seeds, ran_on(results))

    return Findings(rows, verdict, plot, tested, headline, literature, primary=primary)


def _seed_shares(c: Comparison) -> str:
    """'with BN 1, 1, 1 vs without 0, 0.5, 0' (the per-seed values a comparison tested)."""
    def vals(values: Sequence[float]) -> str:
        return ", ".join(f"{v:.2g}" for v in values)
    return f"with BN {vals(c.b.values)} vs without {vals(c.a.values)}"


def _summary(usable: dict[str, list[float]], ran: list[str], swept: list[float],
             t: dict[tuple[float, str], Comparison], both: list[float],
             primary: list[Judgement], high: list[float]) -> tuple[str, str]:
    def where(lrs: list[float]) -> str:
        return f"at lr {_span(lrs, swept)}" if lrs else "at no learning rate"

    if len(ran) < 2:
        return (f"BN trains on every seed {where(usable.get('bnlab', []))}.",
                "Not tested: the sweep without BN did not run on this network.")
    bn, none = usable["bnlab"], usable["none"]
    lower = sum(1 for lr in both if t[(lr, "train_loss")].word == "better")
    headline = (f"Every seed trains with BN {where(bn)} and without BN {where(none)}; "
                + (f"where both train, BN's train loss is clearly lower at {lower} of "
                   f"{len(both)} learning rate{'' if len(both) == 1 else 's'}." if both else
                   "there is no learning rate where both train."))
    if not primary:
        return headline, (f"Not tested: no swept rate above the chapter's {BASE_LR:g} "
                          f"(the high end the claim is about).")
    j = primary[0]
    headline += f" Above lr {BASE_LR:g} (lr {_rates(high)}), BN's higher usable rate: {j.wording}."
    literature = (f"{literature_text(primary)}. Claim judged on the high end only, lr "
                  f"{_rates(high)}: per seed the share of those rates that train; the low end "
                  f"is exploratory.")
    return headline, literature


def _plot(rows: list[dict[str, Any]], ran: list[str], path: Path, n_seeds: int,
          subject: str) -> None:
    fig, axes = new_figure(1, 2, figsize=(11, 4.0))
    for norm in ran:
        pts = [r for r in rows if r["norm"] == norm]
        for ax, key in zip(axes, ("train_loss", "test_acc"), strict=True):
            ax.errorbar([r["lr"] for r in pts], [r[key] for r in pts],
                        yerr=[r[f"{key}_std"] for r in pts], marker="o", ms=4, capsize=3,
                        label=NORMS[norm])
    axes[0].axhline(CHANCE_LOSS, color="gray", ls=":", label="chance (ln 10)")
    for ax in axes:  # the split: the claim is judged on the rates to the right
        ax.axvline(BASE_LR, color="gray", ls="--", lw=0.8,
                   label=f"chapter's rate {BASE_LR:g}: low | high end" if ax is axes[0] else None)
    for ax, name in zip(axes, ("final train loss", "final test accuracy"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (SGD)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, path, f"{subject}: learning-rate sweep (mean +- sample std, "
                    f"{n_seeds} seed{'s' if n_seeds != 1 else ''})")


SETUP = (
    f"The chapter's sigmoid LeNet on Fashion-MNIST (full training set, 5000 test images), plain "
    f"SGD at batch 256, 2 epochs, at learning rates {_rates(LRS)}, without normalization and "
    f"with bnlab's BatchNorm, {SEEDS} seeds each (seed s of every arm sees the same batches). "
    f"Each seed is classified on its own loss curve: diverged (a non-finite train loss at any "
    f"epoch), blown up (a finite final train loss above ln 10 + {DIVERGED_MARGIN:g}), stuck on "
    f"the chance plateau (final train loss at least ln 10 - {PLATEAU_MARGIN:g} and at most "
    f"ln 10 + {DIVERGED_MARGIN:g}, and test accuracy at most {FAILED_ACCURACY:g}), or trains "
    f"(anything else: a final train loss below ln 10 - {PLATEAU_MARGIN:g}, or test accuracy "
    f"above {FAILED_ACCURACY:g}). The usable range of each is the "
    f"learning rates at which every seed trains. The sweep is split at the chapter's rate "
    f"{BASE_LR:g}: the claim (BN allows a higher rate) is judged on the high end only, lr "
    f"{_rates(ends(LRS)[1])}: per seed, the share of those rates at which it trains, with BN "
    f"against without, paired by seed (t-test and exact sign-flip test, TOST against "
    f"+-{HIGH_END.margin:g}; the wording rule of bnlab.studies.claims). Exploratory, Holm-"
    f"corrected as a family of their own and never a verdict on the claim: the same share at "
    f"the low end (lr {_rates(ends(LRS)[0])}, where no BN's small steps leave it on the "
    f"sigmoid plateau), and where both train on every seed, final train loss and test "
    f"accuracy (running averages and PreciseBN statistics) by paired t-tests over seeds; the "
    f"seeds that train at each rate are counted, not tested.")
CAVEATS = (
    "Two epochs is short: a network stuck on the plateau here might leave it later, so "
    "'stuck' means 'not within this budget', and the low end of the no-BN range depends on "
    "it. The sweep has six points a factor of about 3 apart: a range's ends are known only to "
    "that resolution. The high end has only two rates, and the sweep's top (10) is not BN's "
    "limit: a seed that trains at every high rate scores 1, so the measured gain is a lower "
    "bound. One network, one dataset, plain SGD without momentum or schedule; the thresholds "
    "for diverged and stuck and the split at the chapter's rate are fixed in advance, not "
    "fitted.")

STUDY = Study("lr", "Why can the learning rate go up with BN?", arms, analyze,
              seeds=SEEDS, setup=SETUP, caveats=CAVEATS)
