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
probes exceeds what two batches at the same weights differ by (paired: same seeds, same
batches).

**Primary comparisons** (``bnlab.studies.claims``, wording from ``claims.judge``), one per
paper:

* ``LESS_SHIFT`` (Ioffe & Szegedy 2015): BN against no BN on the relative drift, lower with BN;
* ``NOISY_BEATS_NONE`` (Santurkar et al. 2018's argument): noisy BN, whose distributions move
  *more* than without BN, against no BN on test accuracy, higher with noisy BN. If BN helped by
  reducing the shift, the shift injected after it would undo the help.

Exploratory (one Holm family of their own, never a verdict on a paper): noisy BN against BN on
the relative drift (a *manipulation check*: the noise is redrawn every step, so its drift is
larger by design), each arm's drift against its own noise floor, BN against no BN on test
accuracy, and noisy BN against BN on train loss and test accuracy. The train-loss penalty of
noisy BN is also read as an effect size: per seed, the share of BN's train-loss gain over no BN
that the noise takes back, (L_noisy - L_BN) / (L_none - L_BN), with a TOST against
+-``PENALTY_MARGIN`` (a quarter of the gain): a penalty that is clear but inside the margin
does not contradict Santurkar et al.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from bnlab.report.figures import band, new_figure, save
from bnlab.studies.base import (
    Arm,
    ArmResult,
    Findings,
    Study,
    accuracy_comparisons,
    compare_arms,
    put_spread,
    summarize,
)
from bnlab.studies.claims import Claim, Judgement, exploratory, judge, literature_text, tost
from bnlab.studies.options import SHORT_STUDY_SEEDS
from bnlab.studies.probes.ics import POOL, UnitInputProbe
from bnlab.studies.stats import ALPHA, Comparison, compare, p_is
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
PENALTY = "share of BN's train-loss gain lost to the noise"
PENALTY_MARGIN = 0.25
SEEDS = SHORT_STUDY_SEEDS

LESS_SHIFT = Claim(
    key="bn-reduces-shift",
    statement="BN reduces internal covariate shift: the distribution of a layer's inputs "
              "drifts less during training", source="Ioffe & Szegedy 2015", metric=RELATIVE,
    # 0.05 in log units: a 5% change of the drift relative to the noise floor
    direction=-1, margin=0.05, a="no BN", b="BN")
NOISY_BEATS_NONE = Claim(
    key="noisy-bn-beats-none",
    statement="BN with injected distributional shift (noisy BN) still trains better than no "
              "BN, so reducing internal covariate shift is not what makes BN help",
    source="Santurkar et al. 2018", metric="test_acc", direction=+1, margin=0.01,
    a="no BN", b="noisy BN")


def primary(by: dict[str, ArmResult]) -> list[Judgement]:
    """The two declared claims, judged as one family."""
    none, bn, noisy = by["none"], by["bnlab"], by["noisy-bn"]
    return judge([
        (LESS_SHIFT, _drifts(none)[2], _drifts(bn)[2], none.paired_with(bn)),
        (NOISY_BEATS_NONE, none.finals("test_acc"), noisy.finals("test_acc"),
         none.paired_with(noisy)),
    ])


def tests(by: dict[str, ArmResult]) -> dict[str, Comparison]:
    """Every exploratory comparison, Holm-corrected together (their own family), by name."""
    none, bn, noisy = by["none"], by["bnlab"], by["noisy-bn"]
    drift = {k: _drifts(r) for k, r in by.items()}
    raw: dict[str, Comparison] = {
        "drift noisy": compare(drift["bnlab"][2], drift["noisy-bn"][2], metric=RELATIVE,
                               label="drift: noisy BN vs BN (manipulation check)",
                               paired=bn.paired_with(noisy), higher_is_better=None),
    }
    for k, (d, n, _) in drift.items():  # is the drift above what two batches differ by?
        raw[f"floor {k}"] = compare(n, d, metric="drift", paired=True, higher_is_better=None,
                                    label=f"{LABELS[k]}: drift vs its noise floor")
    acc, precise = accuracy_comparisons(none, bn, "BN vs none")
    raw["acc bn"], raw["precise bn"] = acc, precise
    raw["loss noisy"] = compare_arms(bn, noisy, "train_loss", "noisy BN vs BN",
                                     higher_is_better=False)
    acc, precise = accuracy_comparisons(bn, noisy, "noisy BN vs BN")
    raw["acc noisy"], raw["precise noisy"] = acc, precise
    return dict(zip(raw, exploratory(list(raw.values())), strict=True))


def penalty_shares(by: dict[str, ArmResult]) -> list[float]:
    """Per seed, (L_noisy - L_BN) / (L_none - L_BN): the share of BN's train-loss gain over no
    BN that the injected noise takes back; NaN where BN has no gain (L_none <= L_BN)."""
    out = []
    for n, b, z in zip(by["none"].finals("train_loss"), by["bnlab"].finals("train_loss"),
                       by["noisy-bn"].finals("train_loss"), strict=True):
        gain = n - b
        out.append((z - b) / gain if math.isfinite(gain) and gain > 0 else math.nan)
    return out


def penalty_text(shares: list[float]) -> str:
    """'0.076 (95% CI ...), inside +-0.25: TOST p = 0.001' or why it cannot be read."""
    if len(shares) < 2 or not all(math.isfinite(v) for v in shares):
        return "not testable (fewer than two seeds, or a seed where BN has no train-loss gain)"
    zero = [0.0] * len(shares)
    c = compare(zero, shares, metric=PENALTY, label="noisy BN's penalty", paired=True)
    p = tost(zero, shares, PENALTY_MARGIN, paired=True)
    inside = "inside" if p < ALPHA else "not shown inside"
    return (f"{c.b.mean:.3f} (95% CI {c.low:.3f} to {c.high:.3f}), {inside} "
            f"+-{PENALTY_MARGIN:g} (TOST {p_is(p)}, exploratory)")


def floor_word(c: Comparison) -> str:
    """Drift against its noise floor, in words."""
    if not c.testable:
        return c.test
    if not c.clear:
        return "not clearly above its floor"
    return "clearly above its floor" if c.diff > 0 else "clearly below its floor"


def literature(judged: list[Judgement], t: dict[str, Comparison], penalty: str) -> str:
    """Each claim's wording (``claims.literature_text``), with what the manipulation check and
    the train-loss penalty add; the check failing makes Santurkar et al.'s test
    inconclusive, said beside."""
    text = f"{literature_text(judged)}."
    check = t["drift noisy"]
    if not check.testable or check.word != "higher":
        text += (f" The manipulation check did not pass (noisy BN's relative drift against "
                 f"BN's: {check.word}), so noisy BN is not shown to shift the distributions "
                 f"more, and the second comparison does not test Santurkar et al.'s argument.")
    else:
        text += (" Noisy BN's relative drift is clearly larger than BN's (the manipulation "
                 "check, forced by the noise).")
    return text + f" Noisy BN's train-loss penalty, as a share of BN's gain: {penalty}."


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    by = {r.arm.name: r for r in results}
    for row, res in zip(rows, results, strict=True):
        d, n, e = _drifts(res)
        for key, values in (("drift", d), ("noise_floor", n), ("log_drift_over_noise", e)):
            put_spread(row, key, values)
    judged = primary(by)
    t = tests(by)
    penalty = penalty_text(penalty_shares(by))
    less, noisy = judged
    verdict = (f"The drift measure: log(drift / noise floor) of the last hidden layer's unit "
               f"inputs (training mode: the mean |move| of their 15/50/85th percentiles "
               f"between probes, divided by the same measure between two batches at one step: "
               f"scale-free). "
               f"Exploratory (own Holm family): noisy BN against BN on the relative drift "
               f"{t['drift noisy'].text()} (a manipulation check: the noise is redrawn each "
               f"step, so a larger drift is forced by design). Against the noise floor (two "
               f"batches at the same step): "
               + "; ".join(f"{LABELS[k]} {floor_word(t[f'floor {k}'])}" for k in LABELS)
               + f". Test accuracy: BN vs none {t['acc bn'].text()} (PreciseBN "
               f"{t['precise bn'].word}); noisy BN vs BN {t['acc noisy'].text()} (PreciseBN "
               f"{t['precise noisy'].word}), train loss {t['loss noisy'].text()}; that "
               f"penalty as a share of BN's train-loss gain over no BN: {penalty}.")
    headline = (f"Relative drift of unit inputs, log(drift / noise floor), "
                f"{less.comparison.a.text()} without BN, {less.comparison.b.text()} with BN "
                f"(Ioffe & Szegedy: {less.wording}), {t['drift noisy'].b.text()} with noisy "
                f"BN; noisy BN against no BN in test accuracy (Santurkar et al.): "
                f"{noisy.wording}.")

    def plot(path: Path) -> None:
        _plot(results, path)

    return Findings(rows, verdict, plot, list(t.values()), headline,
                    literature(judged, t, penalty), primary=judged)


def _plot(results: list[ArmResult], path: Path) -> None:
    fig, axes = new_figure(1, 4, figsize=(17, 3.8))
    for res in results:
        runs = res.runs
        steps = [p["step"] for p in runs[0].probes]
        band(axes[0], steps, [[p["test_acc"] for p in r.probes] for r in runs], res.arm.label)
        # (a move is None at the first probe after a resume: a gap in the line)
        moves = [[math.nan if p["drift"] is None else p["drift"] for p in r.probes[1:]]
                 for r in runs]
        band(axes[1], steps[1:], moves, res.arm.label)
        band(axes[1], steps, [[p["noise"] for p in r.probes] for r in runs],
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
    seeds=SEEDS,
    setup=("Ioffe & Szegedy's network: three fully connected sigmoid layers of 100 units "
           "(mlp3), weights N(0, 0.01^2) and zero biases (init gaussian-0.01), plain SGD at lr "
           "0.5, batch 60, 6 epochs of Fashion-MNIST (their MNIST is not installable here), "
           f"{SEEDS} seeds. Arms: without BN, with BN before each sigmoid, and Santurkar et "
           "al.'s noisy BN (BN then a per-unit scale in [0.5, 2] and shift in [-1, 1] redrawn "
           "every step). Every 50 steps a probe reads, in training mode, the percentiles "
           "(15/50/85) of the input of each of the 100 last-hidden-layer units on the step's "
           "batch, and on a second batch at the same weights (the noise floor). Drift: the "
           "mean per-unit move of those percentiles between consecutive probes. Primary (the "
           "wording rule of bnlab.studies.claims: t-test and exact sign-flip test, TOST against "
           f"the claim's margin), paired over seeds: BN against no BN on the relative drift "
           f"log(drift / noise floor) (Ioffe & Szegedy 2015; margin "
           f"{LESS_SHIFT.margin:g}, about a {LESS_SHIFT.margin:.0%} change), and noisy BN "
           f"against no BN on test accuracy (Santurkar et al. 2018; margin "
           f"{NOISY_BEATS_NONE.margin:g}). Exploratory, a Holm family of its own: noisy BN "
           "against BN on the relative drift (the manipulation check), each arm's drift "
           "against its noise floor, test accuracy (running averages and PreciseBN) of BN "
           "against no BN and of noisy BN against BN, and noisy BN's train-loss penalty "
           "against BN, also as a share of BN's gain over no BN with a TOST against "
           f"+-{PENALTY_MARGIN:g}."),
    caveats=("Fashion-MNIST instead of MNIST and 6 epochs (6k steps) instead of their "
             "50k; Ioffe & Szegedy gave no learning rate, 0.5 is ours. Drift is measured in the "
             "units of the sigmoid's input: the BN arms' inputs are normalized (scale about 1) "
             "while the unnormalized arm's start tiny (about 0.05) and grow, so the arms are "
             "compared on the drift relative to each arm's own noise floor, log(drift / "
             "floor), not on absolute drifts. Noisy BN's larger drift is a manipulation "
             "check (forced by the noise redrawn each step), not evidence. The noise model is "
             "bnlab's reading "
             "of Santurkar et al.'s section 2.1 (per unit and step; theirs is also per "
             "example). 'No clear difference' in accuracy is not proof of equal accuracy: the "
             "minimum detectable effect beside each primary comparison says what the seeds "
             "could see. PreciseBN re-estimates the noisy arm's statistics with the noise on, "
             "as its running averages were."),
)
