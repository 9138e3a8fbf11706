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
* **blew up**: every L_e finite, but the final L_E > ln 10 + 0.5 = 2.803. A loss above the
  uniform guess's means confidently wrong outputs, which only blown-up weights give; 0.5 is
  far above the seed-to-seed spread of a network at chance (< 0.05). Not "diverged" in the
  stats sense: the table's ``diverged`` column does not count it (``failed`` does when its
  accuracy is at chance).
* **stuck** on the plateau: not diverged or blown up, L_E >= ln 10 - 0.1 = 2.203 *and*
  a <= 0.15 (stats' chance bar). The sigmoid LeNet without BN starts on a plateau at chance
  loss and leaves it only after enough steps: a train loss averaged over an epoch within 0.1
  of ln 10 with test accuracy at chance means it never left. A seed whose accuracy already
  beats chance while the epoch-averaged loss still sits near 2.3 is leaving the plateau, and
  counts as training.
* **trains**: otherwise.

The *usable range* of a normalization is the set of learning rates at which **every** seed
trains. At each learning rate, the share of seeds that train with BN is tested against the
share without (two-sided Fisher exact test on the 2x2 table of trains / does not train; the
difference of the shares with a Newcombe hybrid-score 95% interval). Where both normalizations
train on every seed, BN is compared with no BN (paired t over seeds: the arms share seeds and
batches) on the final train loss and on test accuracy with the running averages and with
PreciseBN statistics. All comparisons, Fisher's included, are Holm-corrected together. BN
"widens the usable range" only where, over all (learning rate, seed) pairs, BN trains clearly
more often (McNemar's exact test on the pairs, which share seeds and batches; in the same Holm
family) and at no single learning rate on clearly fewer seeds: one seed, or a handful, never
decides it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from scipy.stats import binomtest, fisher_exact

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
from bnlab.studies.stats import FAILED_ACCURACY, Comparison, compare, holm, p_is
from bnlab.train import TrainConfig

LRS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
NORMS = {"none": "no BN", "bnlab": "BN"}
CHANCE_LOSS = math.log(10)
DIVERGED_MARGIN = 0.5  # final loss above ln 10 + this: blown up
PLATEAU_MARGIN = 0.1  # final loss within this of ln 10 (and accuracy at chance): stuck
STATES = ("trains", "stuck", "blew up", "diverged")
TRAINS = "trains (share of seeds)"  # the Fisher and McNemar tests' metric
POOLED = math.inf  # the key of the test over all learning rates together


def arms(quick: bool) -> list[Arm]:
    lrs = (0.1, 1.0, 10.0) if quick else LRS
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
    keyed: list[tuple[tuple[float, str], Comparison]] = []
    if len(ran) == 2:
        for lr in swept:
            if ("none", lr) in by and ("bnlab", lr) in by:
                keyed.append(((lr, TRAINS), trains_test(
                    seed_states[("none", lr)], seed_states[("bnlab", lr)], lr)))
    if len(ran) == 2:
        pairs = [(seed_states[("none", lr)], seed_states[("bnlab", lr)]) for lr in swept
                 if ("none", lr) in by and ("bnlab", lr) in by]
        keyed.append(((POOLED, TRAINS), pooled_trains_test(pairs)))
    for lr in both:
        off, on = by[("none", lr)], by[("bnlab", lr)]
        keyed.append(((lr, "train_loss"), compare_arms(
            off, on, "train_loss", f"lr {lr:g}: BN vs no BN", higher_is_better=False)))
        keyed += [((lr, c.metric), c)
                  for c in accuracy_comparisons(off, on, f"lr {lr:g}: BN vs no BN")]
    tested = holm([c for _, c in keyed])
    t = {k: c for (k, _), c in zip(keyed, tested, strict=True)}
    n_seeds = max(len(r.runs) for r in results)
    words = {"none": "without BN", "bnlab": "with BN"}
    verdict = ("Learning rates at which every seed trains (not diverged, blown up or stuck on "
               "the chance plateau; see the setup): "
               + "; ".join(f"{words[n]} {_span(usable[n], swept)}" for n in ran) + ".")
    if len(ran) == 2:
        shares = [trains_text(t[(lr, TRAINS)]) for lr in swept if (lr, TRAINS) in t]
        verdict += (" Seeds that train, BN vs no BN (Fisher exact, Holm-corrected): "
                    + "; ".join(shares) + f". Over all (learning rate, seed) pairs: "
                    f"{pooled_text(t[(POOLED, TRAINS)])}.")
        per = [f"lr {lr:g}: train loss {t[(lr, 'train_loss')].text()}, "
               f"{accuracy_text(t[(lr, 'test_acc')], t.get((lr, 'test_acc_precise')))}"
               for lr in both]
        verdict += (" BN vs no BN where both train (paired t over seeds, Holm-corrected): "
                    + ("; ".join(per) if per else "no learning rate where both train")
                    + ".")
    headline, literature = _summary(usable, ran, swept, t, both)

    def plot(path: Path) -> None:
        _plot(rows, ran, path, n_seeds, ran_on(results))

    return Findings(rows, verdict, plot, tested, headline, literature)


def _wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k / n."""
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _trained(seed_states: Sequence[str]) -> list[float]:
    """1 for each seed that trains, 0 otherwise: the outcome the trains tests compare."""
    return [1.0 if s == "trains" else 0.0 for s in seed_states]


def trains_test(off: list[str], on: list[str], lr: float) -> Comparison:
    """The share of seeds that train with BN (`on`) against without (`off`): a two-sided
    Fisher exact test on [[k_bn, n - k_bn], [k_none, n - k_none]], as a ``stats.Comparison``
    (so it joins the study's Holm family): diff = share with BN - share without, its 95%
    interval Newcombe's hybrid score interval (from the two Wilson intervals). Fewer than two
    seeds in an arm: not testable (``stats.compare``'s rule)."""
    a, b = _trained(off), _trained(on)
    base = compare(a, b, metric=TRAINS, label=f"lr {lr:g}: BN vs no BN", paired=False)
    if not base.testable:
        return base
    k_on, n_on, k_off, n_off = int(sum(b)), len(b), int(sum(a)), len(a)
    _, p = fisher_exact([[k_on, n_on - k_on], [k_off, n_off - k_off]])
    p1, p2 = k_on / n_on, k_off / n_off
    l1, u1 = _wilson(k_on, n_on)
    l2, u2 = _wilson(k_off, n_off)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return replace(base, test="Fisher exact", p=float(p), diff=d, low=low, high=high)


def pooled_trains_test(pairs: Sequence[tuple[list[str], list[str]]]) -> Comparison:
    """Does BN train where no BN does not, over every (learning rate, seed) pair? The two
    arms of a pair share seed and batches, so the paired test of a yes/no outcome applies:
    McNemar's exact test (two-sided binomial test of the discordant pairs, BN-only vs
    none-only, at 1/2). diff = share of pairs that train with BN - without."""
    off = _trained([s for a, _ in pairs for s in a])
    on = _trained([s for _, b in pairs for s in b])
    base = compare(off, on, metric=TRAINS, label="all learning rates: BN vs no BN",
                   paired=True)
    if not base.testable:
        return base
    fewest = min((min(len(a), len(b)) for a, b in pairs), default=0)
    if fewest < 2 or any(len(a) != len(b) for a, b in pairs):  # stats' rule: 2 seeds at least
        return replace(base, test=f"not testable: {fewest} seed(s) in an arm", diff=math.nan,
                       low=math.nan, high=math.nan, p=math.nan)
    only_bn = sum(1 for x, y in zip(off, on, strict=True) if y > x)
    only_none = sum(1 for x, y in zip(off, on, strict=True) if x > y)
    n = only_bn + only_none
    p = 1.0 if n == 0 else float(binomtest(only_bn, n, 0.5).pvalue)
    return replace(base, test="McNemar exact", p=p)


def pooled_text(c: Comparison) -> str:
    """'25 of 30 pairs train with BN vs 5 without (McNemar exact, Holm p < 0.001: better)'."""
    k_on, k_off = int(sum(c.b.values)), int(sum(c.a.values))
    counts = f"{k_on} of {c.b.n} train with BN vs {k_off} without"
    if not c.testable:
        return f"{counts} ({c.test})"
    return f"{counts} ({c.test}, Holm {p_is(c.p_holm)}: {c.word})"


def trains_text(c: Comparison) -> str:
    """'lr 1: 5/5 with BN vs 0/5 without (Holm p = 0.047: better)'."""
    lr = c.label.split(":")[0]
    k_on, k_off = int(sum(c.b.values)), int(sum(c.a.values))
    counts = f"{lr}: {k_on}/{c.b.n} with BN vs {k_off}/{c.a.n} without"
    if not c.testable:
        return f"{counts} ({c.test})"
    return f"{counts} (Holm {p_is(c.p_holm)}: {c.word})"


def _summary(usable: dict[str, list[float]], ran: list[str], swept: list[float],
             t: dict[tuple[float, str], Comparison], both: list[float]) -> tuple[str, str]:
    if len(ran) < 2:
        return (f"BN trains on every seed at lr {_span(usable.get('bnlab', []), swept)}.",
                "Not tested: the sweep without BN did not run on this network.")
    bn, none = usable["bnlab"], usable["none"]
    lower = sum(1 for lr in both if t[(lr, "train_loss")].word == "better")
    def where(lrs: list[float]) -> str:
        return f"at lr {_span(lrs, swept)}" if lrs else "at no learning rate"

    headline = (f"Every seed trains with BN {where(bn)} and without BN {where(none)}; "
                + (f"where both train, BN's train loss is clearly lower at {lower} of "
                   f"{len(both)} learning rates." if both else
                   "there is no learning rate where both train."))
    pooled = t[(POOLED, TRAINS)]
    shares = {lr: c for (lr, m), c in t.items() if m == TRAINS and lr != POOLED}
    more = [lr for lr, c in shares.items() if c.word == "better"]
    fewer = [lr for lr, c in shares.items() if c.word == "worse"]
    claim = ("the claim that BN widens the usable learning-rate range (Ioffe & Szegedy 2015; "
             "Bjorck et al. 2018)")

    def at(lrs: list[float]) -> str:
        return f"at lr {_span(lrs, swept)}" if lrs else "at no learning rate"

    ranges = f"every seed trains with BN {at(bn)}, without BN {at(none)}"
    if not pooled.testable:
        literature = (f"Cannot test {claim}: fewer than two seeds per arm ({ranges}).")
    elif pooled.word == "better" and not fewer:
        literature = (f"Agrees with {claim}: over all (learning rate, seed) pairs "
                      f"{pooled_text(pooled)}; at no single learning rate does BN train on "
                      f"clearly fewer seeds" + (f", and on clearly more at lr "
                                               f"{_span(more, swept)}" if more else "")
                      + f"; {ranges}.")
    elif fewer:
        literature = (f"Does not reproduce {claim}: without BN clearly more seeds train at lr "
                      f"{_span(fewer, swept)}" + (f" (with BN at {_span(more, swept)})"
                                                  if more else "") + f"; {ranges}.")
    else:
        literature = (f"Does not show {claim}: at no learning rate does the share of seeds "
                      f"that train differ clearly (Fisher exact, Holm-corrected); {ranges}.")
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
    for ax, name in zip(axes, ("final train loss", "final test accuracy"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (SGD)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, path, f"{subject}: learning-rate sweep (mean +- sample std, "
                    f"{n_seeds} seed{'s' if n_seeds != 1 else ''})")


SETUP = (
    "The chapter's sigmoid LeNet on Fashion-MNIST (full training set, 5000 test images), plain "
    "SGD at batch 256, 2 epochs, at learning rates 0.03, 0.1, 0.3, 1, 3 and 10, without "
    "normalization and with bnlab's BatchNorm, 5 seeds each (seed s of every arm sees the same "
    "batches). Each seed is classified on its own loss curve: diverged (a non-finite train "
    "loss at any epoch), blown up (a finite final train loss above ln 10 + 0.5), stuck on the "
    "chance plateau "
    "(final train loss within 0.1 of ln 10 and test accuracy at most 0.15), or trains. The "
    "usable range of each is the learning rates at which every seed trains. At each learning "
    "rate the share of seeds that train with and without BN is compared by a two-sided Fisher "
    "exact test; where both train, BN is compared with no BN on final train loss and test "
    "accuracy (running averages and PreciseBN statistics) by paired t-tests over seeds; all "
    "Holm-corrected together; a difference is clear at Holm p < 0.05. BN widens the range "
    "only where it trains on clearly more seeds at some learning rate and clearly fewer at "
    "none.")
CAVEATS = (
    "Two epochs is short: a network stuck on the plateau here might leave it later, so "
    "'stuck' means 'not within this budget', and the low end of the no-BN range depends on "
    "it. The sweep has six points a factor of about 3 apart: a range's ends are known only to "
    "that resolution. One network, one dataset, plain SGD without momentum or schedule; the "
    "thresholds for diverged and stuck are fixed in advance, not fitted.")

STUDY = Study("lr", "Why can the learning rate go up with BN?", arms, analyze,
              setup=SETUP, caveats=CAVEATS)
