"""Why does BN allow a higher learning rate? Weight norms, effective steps, gradients, sharpness.

The ``lr`` study shows *that* the chapter's sigmoid LeNet trains over a wider range of rates
with BN; this one measures *why*, on the same network with and without BN (plain SGD,
Fashion-MNIST), over a learning-rate sweep. Every few steps a probe
(``bnlab.studies.probes.why``) records, per conv/linear layer k, ||W_k||, ||dL/dW_k|| and the
effective step lr / ||W_k||^2, and at some of those steps the sharpness lambda_max of the
step's loss (Lanczos on Hessian-vector products; a probe whose residual bound missed the
tolerance within its products is *unconverged* and never enters a sharpness comparison: the
verdict and the table count those left out).

Three mechanisms the literature offers, each one primary claim at the sweep's highest rate
(where training without BN fails), per seed s (runs with and without BN share seed and batch
order, so the BN - no-BN differences are paired by seed):

* **auto-tuning** (van Laarhoven 2017; Arora, Li & Lyu 2019): the weights before a BN are
  scale invariant, every SGD step grows their norm, so their effective step shrinks. Per seed,
  e(t) = mean over the pre-BN layers of log(lr / ||W_k(t)||^2) at the first probed step
  against the last (paired): the claim says e(last) - e(first) < 0.
* **lower sharpness** (Santurkar et al. 2018; Bjorck et al. 2018): BN makes the loss smoother,
  so lr * lambda_max is lower with BN (whether it stays under the stability bound 2 is not
  tested). Per seed, the mean of log(lr * lambda_max) over the sharpness probes' steps that the
  run with and the run without BN share (``sharpness_pair``): both arms are averaged over the
  same steps, a step whose value is unconverged, or not finite and positive, in either run
  drops out of both, and a seed where either run diverged (a non-finite loss at a probe, or
  fewer sharpness probes than the other run) is NaN, so the claim becomes untestable rather
  than comparing a diverged run's early steps with the other's whole run; the claim says
  BN - no BN < 0.
* **balanced gradients** (Ioffe & Szegedy 2015, section 3.3; Bjorck et al. 2018): with BN the
  gradient's scale does not depend on the layers' weight scales, so one rate suits every
  layer. Per seed, the mean over probes of |log(||g_1|| / ||g_L||)| (first against last
  layer); the claim says BN - no BN < 0.

Each claim's margin is log 2 (a factor of two). The three form the primary family
(``bnlab.studies.claims.judge``); the same measures at the other rates, the compression of the
effective step across rates and the test accuracies are exploratory, Holm-corrected on their
own. The verdict names the mechanisms the primary tests support and those they contradict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
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
    put_spread,
    summarize,
)
from bnlab.studies.claims import Claim, Judgement, exploratory, judge, literature_text
from bnlab.studies.probes.why import WhyProbe
from bnlab.studies.stats import Comparison, compare
from bnlab.train import TrainConfig

LRS = (0.1, 1.0, 10.0)
QUICK_LRS = (1.0, 10.0)
NORMS = {"none": "no BN", "bnlab": "BN"}
SEEDS = 7  # the fewest at which the exact sign-flip test can reach Holm p < 0.05 for 3 claims
MARGIN = math.log(2.0)  # a factor of two on every log scale below
Row = dict[str, Any]

EFF = "log effective step, pre-BN layers"
SHARP = "mean log(lr x lambda_max)"
BALANCE = "|log(grad norm first / last layer)|"
CLAIMS = {
    "auto-tuning": Claim(
        "effective-step-shrinks", "With BN, the effective step lr/||W||^2 of the weights "
        "before each BN shrinks during training, as their norm grows (auto-tuning).",
        "van Laarhoven 2017; Arora, Li & Lyu 2019", EFF, -1, MARGIN,
        a="first probed step", b="last probed step"),
    "lower sharpness": Claim(
        "sharpness-lower-with-bn", "BN makes the loss smoother: lr x lambda_max is lower with "
        "BN at a rate where training without it fails.",
        "Santurkar et al. 2018; Bjorck et al. 2018", SHARP, -1, MARGIN, a="no BN", b="BN"),
    "balanced gradients": Claim(
        "gradients-balanced-with-bn", "BN keeps gradient norms balanced across depth, so one "
        "learning rate suits every layer.", "Ioffe & Szegedy 2015; Bjorck et al. 2018",
        BALANCE, -1, MARGIN, a="no BN", b="BN"),
}


def arm_name(norm: str, lr: float) -> str:
    return f"{norm}-lr{lr:g}"


def arms(quick: bool) -> list[Arm]:
    # The lr study's network and data (LeNet of the BN chapter, sigmoid, plain SGD), on a
    # training subset: the probe's Hessian-vector products cost several steps each.
    base = TrainConfig(model="lenet-bn", epochs=1, limit_train=512 if quick else 5120,
                       limit_test=500 if quick else 2000)
    every, sharp_every, iters = (1, 2, 4) if quick else (2, 5, 12)
    return [Arm(arm_name(norm, lr), f"{label}, lr {lr:g}", replace(base, norm=norm, lr=lr),
                {"norm": norm, "lr": lr},
                probe=partial(WhyProbe, every, lr, sharp_every=sharp_every, iters=iters))
            for lr in (QUICK_LRS if quick else LRS) for norm, label in NORMS.items()]


# ---- per-probe and per-seed measures (pure functions of probe rows) ----

def _log(v: Any) -> float:
    ok = isinstance(v, (int, float)) and math.isfinite(v) and v > 0
    return math.log(v) if ok else math.nan


def converged(row: Row) -> bool:
    """Whether the probe's Lanczos iteration met its residual bound (a record without the flag
    predates it: not converged)."""
    return row.get("sharpness_converged") == 1.0


def log_sharpness(row: Row) -> float:
    """log(lr x lambda_max) of a converged sharpness probe; NaN when unconverged or not
    finite and positive."""
    return _log(row["lr_sharpness"]) if converged(row) else math.nan


def unconverged(probes: Sequence[Row]) -> tuple[int, int]:
    """How many of the run's sharpness probes are unconverged, and how many there are."""
    measured = [p for p in probes if "lr_sharpness" in p]
    return sum(1 for p in measured if not converged(p)), len(measured)


def depth(row: Row) -> int:
    """How many conv/linear layers the probe recorded (``layer1`` .. ``layerL``)."""
    return sum(1 for k in row if k.startswith("weight_norm.layer"))


def log_eff_step(row: Row) -> float:
    """Mean over the layers that feed a norm layer of log(lr / ||W_k||^2); NaN without any."""
    logs = [_log(row.get(f"eff_step.layer{k}")) for k in range(1, depth(row) + 1)
            if row.get(f"feeds_norm.layer{k}") == 1.0]
    return statistics.fmean(logs) if logs else math.nan


def balance(row: Row) -> float:
    """|log(||g_1|| / ||g_L||)|: 0 when the first and last layers' gradients are equal."""
    n = depth(row)
    return abs(_log(row.get("grad_norm.layer1")) - _log(row.get(f"grad_norm.layer{n}"))) \
        if n else math.nan


def _finite_mean(values: Sequence[float]) -> float:
    kept = [v for v in values if math.isfinite(v)]
    return statistics.fmean(kept) if kept else math.nan


def eff_first_last(probes: Sequence[Row]) -> tuple[float, float]:
    """log effective step (``log_eff_step``) at the first and the last probed step."""
    values = [log_eff_step(p) for p in probes]
    return (values[0], values[-1]) if values else (math.nan, math.nan)


def sharpness_level(probes: Sequence[Row]) -> float:
    """Mean of log(lr x lambda_max) over the probes that measured it (converged, finite,
    positive)."""
    return _finite_mean([log_sharpness(p) for p in probes if "lr_sharpness" in p])


def _diverged(probes: Sequence[Row]) -> bool:
    return any(not math.isfinite(float(p.get("loss", 0.0))) for p in probes)


def sharpness_pair(off: Sequence[Row], on: Sequence[Row]) -> tuple[float, float]:
    """One seed's mean log(lr x lambda_max) without and with BN over the sharpness steps both
    runs share (module docstring); NaN for both when either run diverged or none is shared."""
    a = {p["step"]: log_sharpness(p) for p in off if "lr_sharpness" in p}
    b = {p["step"]: log_sharpness(p) for p in on if "lr_sharpness" in p}
    if a.keys() != b.keys() or _diverged(off) or _diverged(on):
        return math.nan, math.nan
    steps = [s for s in sorted(a) if math.isfinite(a[s]) and math.isfinite(b[s])]
    if not steps:
        return math.nan, math.nan
    return statistics.fmean(a[s] for s in steps), statistics.fmean(b[s] for s in steps)


def sharpness_pairs(off: ArmResult, on: ArmResult) -> tuple[list[float], list[float]]:
    """Per seed (runs matched by seed), ``sharpness_pair``: the no-BN and the BN values."""
    on_by = {run.config.seed: run for run in on.runs}
    pairs = [sharpness_pair(run.probes, on_by[run.config.seed].probes)
             if run.config.seed in on_by else (math.nan, math.nan) for run in off.runs]
    return [x for x, _ in pairs], [y for _, y in pairs]


def sharpness_at(probes: Sequence[Row], which: int) -> float:
    """log(lr x lambda_max) at the first (`which` 0) or last (-1) *converged* sharpness probe
    (an unconverged one is no measurement: skipped, not read as a diverged seed); NaN when the
    run has no converged probe."""
    measured = [v for v in (log_sharpness(p) for p in probes if "lr_sharpness" in p)
                if math.isfinite(v)]
    return measured[which] if measured else math.nan


def balance_level(probes: Sequence[Row]) -> float:
    return _finite_mean([balance(p) for p in probes])


def per_seed(res: ArmResult, measure: Callable[[Sequence[Row]], float]) -> list[float]:
    return [measure(run.probes) for run in res.runs]


# ---- the comparisons ----

def primary(by: dict[tuple[str, float], ArmResult], top: float
            ) -> list[tuple[Claim, list[float], list[float], bool]]:
    """The three claims at the highest rate, with their per-seed values (module docstring)."""
    off, on = by[("none", top)], by[("bnlab", top)]
    first_last = per_seed_pairs(on)
    paired = off.paired_with(on)
    return [
        (_at(CLAIMS["auto-tuning"], top), [a for a, _ in first_last],
         [b for _, b in first_last], True),
        (_at(CLAIMS["lower sharpness"], top), *sharpness_pairs(off, on), paired),
        (_at(CLAIMS["balanced gradients"], top), per_seed(off, balance_level),
         per_seed(on, balance_level), paired),
    ]


def per_seed_pairs(res: ArmResult) -> list[tuple[float, float]]:
    return [eff_first_last(run.probes) for run in res.runs]


def _at(claim: Claim, lr: float) -> Claim:
    return replace(claim, a=f"lr {lr:g}: {claim.a}", b=f"lr {lr:g}: {claim.b}")


def exploratory_tests(by: dict[tuple[str, float], ArmResult], lrs: list[float]
                      ) -> list[Comparison]:
    """The measures at every rate below the top, the sharpness at the first and last converged
    probe, the effective step's compression across rates, and the test accuracies."""
    out: list[Comparison] = []
    for lr in lrs:
        off, on = by[("none", lr)], by[("bnlab", lr)]
        paired, label = off.paired_with(on), f"lr {lr:g}: BN vs no BN"
        if lr != lrs[-1]:
            pairs = per_seed_pairs(on)
            out.append(compare([a for a, _ in pairs], [b for _, b in pairs], metric=EFF,
                               label=f"lr {lr:g}, BN: last vs first probed step", paired=True,
                               higher_is_better=False))
            out.append(compare(*sharpness_pairs(off, on), metric=SHARP, label=label, paired=paired,
                               higher_is_better=False))
            out.append(compare(per_seed(off, balance_level), per_seed(on, balance_level),
                               metric=BALANCE, label=label, paired=paired,
                               higher_is_better=False))
        for which, when in ((0, "first"), (-1, "last")):
            out.append(compare(per_seed(off, partial(sharpness_at, which=which)),
                               per_seed(on, partial(sharpness_at, which=which)),
                               metric=f"log(lr x lambda_max), {when} converged probe",
                               label=label, paired=paired, higher_is_better=False))
        out += accuracy_comparisons(off, on, label)
    low, top = lrs[0], lrs[-1]
    if top > low:  # the nominal rates differ by top/low; the effective steps at the end by less?
        shift = math.log(top / low)
        nominal = [b + shift for _, b in per_seed_pairs(by[("bnlab", low)])]
        actual = [b for _, b in per_seed_pairs(by[("bnlab", top)])]
        out.append(compare(nominal, actual, metric=EFF, paired=True, higher_is_better=False,
                           label=f"BN, last step: lr {top:g} vs lr {low:g} x {top / low:g} "
                                 f"(below 0: compressed)"))
    return exploratory(out)


# ---- the analysis ----

def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    by = {(r.arm.tags["norm"], r.arm.tags["lr"]): r for r in results}
    lrs = sorted({lr for _, lr in by})
    for row, res in zip(rows, results, strict=True):
        eff = per_seed_pairs(res)
        for key, values in (("log eff. step first", [a for a, _ in eff]),
                            ("log eff. step last", [b for _, b in eff]),
                            ("log lr x sharpness first",
                             per_seed(res, partial(sharpness_at, which=0))),
                            ("log lr x sharpness last",
                             per_seed(res, partial(sharpness_at, which=-1))),
                            ("grad balance", per_seed(res, balance_level))):
            # an unconverged sharpness probe is NaN: left out (counted in the next column)
            put_spread(row, key, [v for v in values if math.isfinite(v)])
        left_out, measured = _count_unconverged([res])
        row["unconverged sharpness probes"] = f"{left_out} of {measured}"
    top = lrs[-1]
    judged = judge(primary(by, top))
    explored = exploratory_tests(by, lrs)
    verdict = (f"Which mechanism the data support at lr {top:g}, the sweep's highest rate: "
               + "; ".join(f"{name} [{j.claim.key}]: {j.wording}"
                           for name, j in zip(CLAIMS, judged, strict=True))
               + ". Geometric means over seeds, first -> last (converged) probe (exploratory): "
               + "; ".join(_trajectory(rows, results, lr) for lr in lrs) + ". "
               + _unconverged_note(results, top))

    def plot(path: Path) -> None:
        _plot(by, lrs, path)

    return Findings(rows, verdict, plot, explored, headline(judged, top),
                    literature_text(judged), judged)


def _count_unconverged(results: Sequence[ArmResult]) -> tuple[int, int]:
    counts = [unconverged(run.probes) for res in results for run in res.runs]
    return sum(u for u, _ in counts), sum(m for _, m in counts)


def _unconverged_note(results: Sequence[ArmResult], top: float) -> str:
    """How many sharpness probes every sharpness comparison left out as unconverged."""
    left_out, measured = _count_unconverged(results)
    at_top, top_measured = _count_unconverged([r for r in results if r.arm.tags["lr"] == top])
    return (f"Sharpness probes left out as unconverged (Lanczos residual bound above the "
            f"tolerance within the product budget): {left_out} of {measured}, {at_top} of "
            f"{top_measured} at lr {top:g}.")


def _trajectory(rows: list[Row], results: list[ArmResult], lr: float) -> str:
    """'lr 10: lr x lambda_max BN 2.3e+02 -> 3.1, no BN 63 -> 1.4; effective step (BN) 6.3
    -> 0.06'."""
    row = {res.arm.tags["norm"]: r for r, res in zip(rows, results, strict=True)
           if res.arm.tags["lr"] == lr}

    def change(norm: str, key: str) -> str:
        first, last = row[norm][f"{key} first"], row[norm][f"{key} last"]
        return f"{math.exp(first):.2g} -> {math.exp(last):.2g}" \
            if math.isfinite(first) and math.isfinite(last) else "n/a"

    return (f"lr {lr:g}: lr x lambda_max BN {change('bnlab', 'log lr x sharpness')}, no BN "
            f"{change('none', 'log lr x sharpness')}; effective step of the pre-BN layers "
            f"{change('bnlab', 'log eff. step')}")


def headline(judged: Sequence[Judgement], top: float) -> str:
    """Which mechanisms the primary tests support, contradict or leave open."""
    by_word: dict[str, list[str]] = {}
    for name, j in zip(CLAIMS, judged, strict=True):
        by_word.setdefault(j.wording.split(" (")[0], []).append(name)
    support = by_word.get("reproduces", [])
    against = by_word.get("contradicts", [])
    rest = [n for n in CLAIMS if n not in support and n not in against]
    parts = [f"{label} {_names(names)}" for label, names in (
        ("the data support", support), ("they contradict", against), ("not decided:", rest))
        if names]
    return f"At lr {top:g}: " + "; ".join(parts) + "."


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


# ---- the figure ----

PANELS = ("weight norm ||W||", "effective step lr/||W||^2", "gradient norm ||dL/dW||",
          "lr x lambda_max")


def _curve(res: ArmResult, value: Callable[[Row], float]) -> tuple[list[float], list[float]]:
    """Steps (in epochs) and the geometric mean over seeds of `value` at the probed steps that
    every seed measured."""
    per_run = [{p["step"]: _log(value(p)) for p in run.probes} for run in res.runs]
    steps = sorted(set.intersection(*(set(r) for r in per_run))) if per_run else []
    cfg = res.runs[0].config if res.runs else None
    per_epoch = math.ceil(min(cfg.limit_train or 60000, 60000) / cfg.batch_size) if cfg else 1
    xs, ys = [], []
    for s in steps:
        logs = [r[s] for r in per_run]
        if all(math.isfinite(v) for v in logs):
            xs.append(s / per_epoch)
            ys.append(math.exp(statistics.fmean(logs)))
    return xs, ys


def _field(key: str, row: Row) -> float:
    return float(row.get(key, math.nan))


def _converged_lr_sharpness(row: Row) -> float:
    return _field("lr_sharpness", row) if converged(row) else math.nan


def _plot(by: dict[tuple[str, float], ArmResult], lrs: list[float], path: Path) -> None:
    fig, axes = new_figure(len(lrs), len(PANELS), figsize=(16, 3.2 * len(lrs)), squeeze=False)
    n = 0
    for i, lr in enumerate(lrs):
        for norm, style in (("bnlab", "-"), ("none", "--")):
            res = by[(norm, lr)]
            n = len(res.runs)
            probes = res.runs[0].probes if res.runs else []
            layers = depth(probes[0]) if probes else 0
            for k in range(1, layers + 1):
                for ax, key in ((axes[i, 0], "weight_norm"), (axes[i, 1], "eff_step"),
                                (axes[i, 2], "grad_norm")):
                    if key == "eff_step" and probes[0].get(f"feeds_norm.layer{k}") != 1.0:
                        continue
                    xs, ys = _curve(res, partial(_field, f"{key}.layer{k}"))
                    ax.plot(xs, ys, style, color=f"C{k - 1}", label=f"{NORMS[norm]}, layer {k}")
            xs, ys = _curve(res, _converged_lr_sharpness)
            axes[i, 3].plot(xs, ys, style, marker="o", ms=3, color="k", label=NORMS[norm])
        axes[i, 3].axhline(2.0, color="red", lw=0.8, label="stability bound 2")
        for j, title in enumerate(PANELS):
            ax = axes[i, j]
            ax.set_title(f"lr {lr:g}: {title}", fontsize=9)
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[i, 0].legend(fontsize=5, ncol=2)
        axes[i, 3].legend(fontsize=6)
    save(fig, path, f"Per layer over training, BN solid, no BN dashed (geometric mean over {n} "
                    f"seeds; effective step: layers before a BN)")


STUDY = Study(
    "why-higher-lr", "Why does BN allow a higher learning rate?", arms, analyze, seeds=SEEDS,
    needs="its probe reads the conv/linear layers of bnlab's LeNet with and without BN",
    setup=("The lr study's network: the BN chapter's LeNet (sigmoid; with BN, a BatchNorm before"
           " each sigmoid; without, the same layers minus the BN), Xavier init, plain SGD, batch"
           " 256, one epoch over the first 5,120 Fashion-MNIST training images (20 steps: a "
           "subset, because each Hessian-vector product costs several steps), test on 2,000 "
           "images, at lr 0.1, 1 and 10, 7 seeds (the fewest at which the exact sign-flip test "
           "can reach Holm p < 0.05 over three claims). Every 2 steps a probe records each "
           "conv/linear layer's weight norm, gradient norm and effective step lr/||W||^2; at "
           "steps 0 and 10 also the largest Hessian eigenvalue of the step's loss (Lanczos with "
           "full reorthogonalization on Hessian-vector products by double backward, "
           "warm-started from the previous probe's Ritz vector, at most 12 products, stopped "
           "when the Ritz pair's residual bound is within 1% of the eigenvalue, on the step's "
           "batch in training mode; a probe that misses the bound is recorded unconverged and "
           "left out of every sharpness comparison). Three primary claims at lr "
           "10 (the rate where the lr study's network fails without BN), paired by seed, margin "
           "a factor of two, judged by the one wording rule of bnlab.studies.claims: the "
           "effective step of the pre-BN weights shrinks from the first to the last probed step;"
           " lr x lambda_max is lower with BN (mean log over the converged sharpness probes' "
           "steps both runs share; a diverged run makes its seed untestable; the stability "
           "bound lr x lambda_max < 2 is drawn, not tested); the first and last layers' "
           "gradient norms are closer with BN (mean |log ratio| over probes). "
           "The same measures at the other rates, the compression of the effective step across "
           "rates and the test accuracies are exploratory."),
    caveats=("Twenty steps on a training subset show the early phase, where the rate decides "
             "whether a network trains at all; later phases are not measured. A Lanczos "
             "iteration capped at 12 products may stop short of its residual bound: such a "
             "probe is left out of both arms' means at its step (the verdict counts them, and "
             "the table per arm), so many unconverged probes thin the comparison. A converged "
             "probe certifies an eigenvalue within 1% of its value, the largest unless the "
             "start is nearly orthogonal to the top eigenvector, or a second eigenvalue lies "
             "within a few percent of the top (then the estimate can be that one). lambda_max "
             "is over all parameters (the last layer and BN's weight and bias included, which "
             "are not scale invariant); a probe whose value is not positive has no log and "
             "drops out of the mean of both arms (the steps both runs share), and a seed "
             "where a run diverged makes the comparison untestable. A saturated network "
             "without BN has small gradients and a flat loss, so its lambda_max can be tiny: a "
             "low sharpness there means the network stopped moving, "
             "not that it trains."),
)
