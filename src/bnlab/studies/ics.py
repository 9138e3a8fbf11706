"""Internal covariate shift, measured: Ioffe & Szegedy's Figure 1 and Santurkar et al.'s test.

Ioffe & Szegedy (2015, Figure 1) train three fully connected sigmoid layers of 100 units on
MNIST (batch 60, SGD, small Gaussian initial weights) and show that with BN the distribution of
a last-layer unit's input (its 15th, 50th and 85th percentiles) stays steady while without BN it
drifts: "internal covariate shift", which BN was said to remove. Santurkar et al. (2018,
section 2.1) inject a random per-unit scale and shift after every BN layer, changed every step
(``norm="noisy-bn"``): the distributions now move *more* than without BN, yet the network
trains about as well as with BN, so reducing ICS is not what makes BN help.

The measurement (``UnitInputProbe``), every `every` steps, in training mode (batch statistics,
noise on: the network as the optimizer sees it), on all H = 100 units of the last hidden
layer's pre-sigmoid input z (BN's output in the BN arms):

* q_t[k, j]: the k-th percentile (k in 15, 50, 85) of unit j's input over the step's batch A_t;
* the *noise floor* n_t = mean_{k,j} |q(A_t) - q(B_t)|, B_t another batch of the same size
  drawn from a fixed training pool, at the same weights (and the same injected noise): what
  two batches give when nothing moved;
* the *drift* d_t = mean_{k,j} |q_{t'}(A_{t'}) - q_t(A_t)| between consecutive probes t, t'.

Per run, drift = mean_t d_t and noise = mean_t n_t (in the units of z, the sigmoid's input).
Those units differ between the arms by a factor of about 20 (the unnormalized arm's inputs
start at a scale of about 0.05, the BN arms' at about 1), so the arms are compared on the
scale-free *relative drift* log(drift / noise) per seed: how many times the move between
probes exceeds what two batches at the same weights differ by (paired t: same seeds, same
batches). Each arm's drift is also tested against its own floor (is there a shift at all?).
Noisy BN against BN is a *manipulation check*: its injected noise is redrawn every step, so
its drift is larger by design; it shows the manipulation worked, not that ICS is harmless.
All tests go through one Holm correction.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from bnlab.report.figures import new_figure, save
from bnlab.studies.base import (
    Arm,
    ArmResult,
    Findings,
    Study,
    accuracy_comparisons,
    compare_arms,
    summarize,
)
from bnlab.studies.probes.ics import POOL, UnitInputProbe
from bnlab.studies.stats import Comparison, compare, holm
from bnlab.train import TrainConfig

LABELS = {"none": "without BN", "bnlab": "with BN", "noisy-bn": "noisy BN"}


def drift_and_noise(probes: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """A run's drift (mean over its probes' moves since the previous probe) and its noise
    floor (mean over probes); NaN when a value is not finite or there is no move."""
    moves = [p["drift"] for p in probes if p.get("drift") is not None]
    noise = [p["noise"] for p in probes if p.get("noise") is not None]
    if not moves or not noise:
        return math.nan, math.nan
    values = (statistics.fmean(moves), statistics.fmean(noise))
    return tuple(v if math.isfinite(v) else math.nan for v in values)  # type: ignore[return-value]


def arms(quick: bool) -> list[Arm]:
    # fuse=False: the probe hooks the model's last nn.Sigmoid, which fusion would absorb.
    cfg = TrainConfig(model="mlp3", batch_size=60, lr=0.5, init="gaussian-0.01",
                      epochs=1 if quick else 6, fuse=False,
                      limit_train=1200 if quick else None, limit_test=1000 if quick else None)
    every, n_test = (4, 500) if quick else (50, 2000)
    return [Arm(norm, label, replace(cfg, norm=norm), {"norm": norm},
                probe=partial(UnitInputProbe, every, n_test, pool=600 if quick else POOL))
            for norm, label in LABELS.items()]


def relative_drift(drift: float, noise: float) -> float:
    """log(drift / noise floor): scale-free (both are in the units of z at the same steps);
    NaN where either is not finite or not positive."""
    ok = math.isfinite(drift) and math.isfinite(noise) and drift > 0 and noise > 0
    return math.log(drift / noise) if ok else math.nan


def _drifts(res: ArmResult) -> tuple[list[float], list[float], list[float]]:
    """Per seed: drift, noise floor, and the relative drift log(drift / floor)."""
    pairs = [drift_and_noise(r.probes) for r in res.runs]
    return ([d for d, _ in pairs], [n for _, n in pairs],
            [relative_drift(d, n) for d, n in pairs])


RELATIVE = "log(drift / noise floor)"


def tests(by: dict[str, ArmResult]) -> dict[str, Comparison]:
    """Every comparison of the study, Holm-corrected together, by name."""
    none, bn, noisy = by["none"], by["bnlab"], by["noisy-bn"]
    drift = {k: _drifts(r) for k, r in by.items()}
    raw: dict[str, Comparison] = {
        "drift bn": compare(drift["none"][2], drift["bnlab"][2], metric=RELATIVE,
                            label="drift: BN vs none", paired=none.paired_with(bn),
                            higher_is_better=False),
        "drift noisy": compare(drift["bnlab"][2], drift["noisy-bn"][2], metric=RELATIVE,
                               label="drift: noisy BN vs BN (manipulation check)",
                               paired=bn.paired_with(noisy), higher_is_better=False),
    }
    for k, (d, n, _) in drift.items():  # is the drift above what two batches differ by?
        raw[f"floor {k}"] = compare(n, d, metric="drift", paired=True,
                                    label=f"{LABELS[k]}: drift vs its noise floor")
    acc, precise = accuracy_comparisons(none, bn, "BN vs none")
    raw["acc bn"], raw["precise bn"] = acc, precise
    raw["loss noisy"] = compare_arms(bn, noisy, "train_loss", "noisy BN vs BN",
                                     higher_is_better=False)
    acc, precise = accuracy_comparisons(bn, noisy, "noisy BN vs BN")
    raw["acc noisy"], raw["precise noisy"] = acc, precise
    return dict(zip(raw, holm(list(raw.values())), strict=True))


def floor_word(c: Comparison) -> str:
    """Drift against its noise floor, in words."""
    if not c.testable:
        return c.test
    if not c.clear:
        return "not clearly above its floor"
    return "clearly above its floor" if c.diff > 0 else "clearly below its floor"


def literature(t: dict[str, Comparison]) -> str:
    """Agreement with Ioffe & Szegedy's picture and with Santurkar et al.'s claim, decided from
    the corrected comparisons. Santurkar et al.'s claim needs noisy BN to train *as well as*
    BN; without an equivalence test "not clearly worse" is absence of evidence, so it is at
    most "consistent with", never "agrees"."""
    word = t["drift bn"].word
    if word == "better":
        ioffe = ("agrees with Ioffe & Szegedy (2015, Figure 1): BN clearly reduces the relative "
                 "drift of the last hidden layer's input distributions")
    elif not t["drift bn"].testable:
        ioffe = (f"Ioffe & Szegedy (2015, Figure 1) cannot be tested: {t['drift bn'].test}")
    else:
        how = {"worse": "clearly increases", "no clear difference": "does not clearly reduce"}
        ioffe = (f"does not reproduce Ioffe & Szegedy (2015, Figure 1): BN {how[word]} the "
                 f"relative drift of the last hidden layer's input distributions")
    legs = [t[k] for k in ("loss noisy", "acc noisy", "precise noisy")]
    untestable = [c for c in legs if not c.testable]
    worse = [c for c in legs if c.word == "worse"]
    names = {"train_loss": "train loss", "test_acc": "test accuracy",
             "test_acc_precise": "test accuracy with PreciseBN statistics"}
    if not t["drift noisy"].testable:
        santurkar = (f"Santurkar et al. (2018)'s test cannot be tested: "
                     f"{t['drift noisy'].test}")
    elif t["drift noisy"].word != "worse":
        santurkar = (f"Santurkar et al. (2018)'s test is inconclusive here: the manipulation "
                     f"check failed, the injected noise did not clearly raise the relative "
                     f"drift ({t['drift noisy'].word})")
    elif worse:
        santurkar = ("does not reproduce Santurkar et al. (2018): noisy BN shifts the "
                     "distributions clearly more and is clearly worse than BN in "
                     + ", ".join(names[c.metric] for c in worse))
    elif untestable:
        santurkar = ("Santurkar et al. (2018)'s claim cannot be tested: noisy BN shifts the "
                     "distributions clearly more, but its training against BN cannot be tested "
                     f"({untestable[0].test})")
    else:
        santurkar = ("consistent with Santurkar et al. (2018), not a confirmation: noisy BN's "
                     "relative drift is clearly larger than BN's (the manipulation check, forced "
                     "by the noise redrawn each step), and noisy BN is not clearly worse than BN "
                     "in train loss or test accuracy (no equivalence test: absence of evidence, "
                     "not shown equal)")
    return f"{ioffe}; {santurkar}."


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    by = {r.arm.name: r for r in results}
    for row, res in zip(rows, results, strict=True):
        d, n, e = _drifts(res)
        for key, values in (("drift", d), ("noise_floor", n), ("log_drift_over_noise", e)):
            finite = all(math.isfinite(v) for v in values)
            row[key] = statistics.fmean(values) if finite and values else math.nan
            row[f"{key}_std"] = statistics.stdev(values) if finite and len(values) > 1 \
                else math.nan
    t = tests(by)
    verdict = (f"Relative drift of the last hidden layer's unit inputs, log(drift / noise "
               f"floor) (training mode, mean |move| of their 15/50/85th percentiles between "
               f"probes over the same between two batches at one step: scale-free; paired t "
               f"over seeds, Holm): with BN {t['drift bn'].text()}; noisy BN against BN "
               f"{t['drift noisy'].text()} (a manipulation check: the noise is redrawn each "
               f"step, so a larger drift is forced by design, not evidence). "
               f"Against the noise floor (two batches at the same step): "
               + "; ".join(f"{LABELS[k]} {floor_word(t[f'floor {k}'])}" for k in LABELS)
               + f". Test accuracy: BN vs none {t['acc bn'].text()} (PreciseBN "
               f"{t['precise bn'].word}); noisy BN vs BN {t['acc noisy'].text()} (PreciseBN "
               f"{t['precise noisy'].word}), train loss {t['loss noisy'].word}.")
    headline = (f"Relative drift of unit inputs, log(drift / noise floor), "
                f"{t['drift bn'].a.text()} without BN, "
                f"{t['drift bn'].b.text()} with BN ({t['drift bn'].word}), "
                f"{t['drift noisy'].b.text()} with noisy BN; test accuracy with noisy BN vs BN: "
                f"{t['acc noisy'].word}.")

    def plot(path: Path) -> None:
        _plot(results, path)

    return Findings(rows, verdict, plot, list(t.values()), headline, literature(t))


def _band(ax: Any, steps: list[float], series: list[list[float]], label: str,
          style: str = "-") -> None:
    """Mean line and a +- sample std band over seeds."""
    n = min(len(s) for s in series)
    cols = list(zip(*(s[:n] for s in series), strict=True))
    mean = [statistics.fmean(c) for c in cols]
    line = ax.plot(steps[:n], mean, style, label=label)[0]
    if len(series) > 1:
        std = [statistics.stdev(c) for c in cols]
        ax.fill_between(steps[:n], [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)],
                        color=line.get_color(), alpha=0.2)


def _plot(results: list[ArmResult], path: Path) -> None:
    fig, axes = new_figure(1, 4, figsize=(17, 3.8))
    for res in results:
        runs = res.runs
        steps = [p["step"] for p in runs[0].probes]
        _band(axes[0], steps, [[p["test_acc"] for p in r.probes] for r in runs], res.arm.label)
        # (a move is None at the first probe after a resume: a gap in the line)
        moves = [[math.nan if p["drift"] is None else p["drift"] for p in r.probes[1:]]
                 for r in runs]
        _band(axes[1], steps[1:], moves, res.arm.label)
        _band(axes[1], steps, [[p["noise"] for p in r.probes] for r in runs],
              f"{res.arm.label}: noise floor", ":")
    for ax, res in zip(axes[2:], results[:2], strict=False):
        p = res.runs[0].probes
        steps = [q["step"] for q in p]
        for key in ("p15", "p50", "p85"):
            ax.plot(steps, [q[key] for q in p], label=key)
        ax.set_title(f"unit 0's input, {res.arm.label} (seed 0)")
    axes[0].set_title("test accuracy")
    axes[1].set_title("drift per probe interval")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, path, f"Unit inputs of the last hidden layer (mean +- sample std, "
                    f"{len(results[0].runs)} seeds)")


STUDY = Study(
    "ics", "Does BN reduce internal covariate shift, and is that why it helps (Ioffe & "
    "Szegedy's Figure 1 vs Santurkar et al.'s noisy BN)?", arms, analyze,
    needs="it trains Ioffe & Szegedy's own sigmoid network and probes its units",
    setup=("Ioffe & Szegedy's network: three fully connected sigmoid layers of 100 units "
           "(mlp3), weights N(0, 0.01^2) and zero biases (init gaussian-0.01), plain SGD at lr "
           "0.5, batch 60, 6 epochs of Fashion-MNIST (their MNIST is not installable here), "
           "5 seeds. Arms: without BN, with BN before each sigmoid, and Santurkar et al.'s noisy "
           "BN (BN then a per-unit scale in [0.5, 2] and shift in [-1, 1] redrawn every step). "
           "Every 50 steps a probe reads, in training mode, the percentiles (15/50/85) of the "
           "input of each of the 100 last-hidden-layer units on the step's batch, and on a "
           "second batch at the same weights (the noise floor). Drift: the mean per-unit move "
           "of those percentiles between consecutive probes. Verdicts: paired t over seeds on "
           "the relative drift log(drift / noise floor), train loss and test accuracy "
           "(running averages and PreciseBN), and drift "
           "against its own noise floor, all Holm-corrected together; a difference is clear "
           "at Holm p < 0.05."),
    caveats=("Fashion-MNIST instead of MNIST and 6 epochs (6k steps) instead of their "
             "50k; Ioffe & Szegedy gave no learning rate, 0.5 is ours. Drift is measured in the "
             "units of the sigmoid's input: the BN arms' inputs are normalized (scale about 1) "
             "while the unnormalized arm's start tiny (about 0.05) and grow, so the arms are "
             "compared on the drift relative to each arm's own noise floor, log(drift / "
             "floor), not on absolute drifts. Noisy BN's larger drift is a manipulation "
             "check (forced by the noise redrawn each step), not evidence. The noise model is "
             "bnlab's reading "
             "of Santurkar et al.'s section 2.1 (per unit and step; theirs is also per "
             "example). 'No clear difference' in accuracy is not proof of equal accuracy: "
             "with 5 seeds only large gaps are detectable. PreciseBN re-estimates the noisy "
             "arm's statistics with the noise on, as its running averages were."),
)
