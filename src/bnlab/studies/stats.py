"""The statistics every study's verdict rests on: one failure rule, one test, one correction.

Each seed of an arm gives one value of a metric (its final epoch's, unless a study says
otherwise). From those values:

* **Failed seeds.** A seed *diverged* when its final training loss is not finite, and *failed*
  when it diverged or never beat chance (test accuracy <= ``FAILED_ACCURACY``). Tables count
  both. A metric with a non-finite value in any seed has no mean: it is shown as "diverged k/n"
  and never enters a test, so a NaN can neither read as "within noise" nor vanish silently.
  (Test accuracy is always finite: a diverged network's accuracy is counted as what it is.)
* **Summary.** The mean and the *sample* standard deviation (``ddof=1``) over seeds.
* **Comparison** of arm B against arm A: the difference of means ``B - A``, its 95% confidence
  interval and a two-sided p value from

  - a *paired* t-test on the per-seed differences when the arms share seeds and batches (the
    same seeds, dataset, batch size, training subset and epochs: seed s of both arms saw the
    same batches in the same order), which removes the seed-to-seed variation they share;
  - *Welch's* t-test otherwise (unequal variances).

  Accuracies come in steps of 1/n_test, so arms can tie exactly: with no spread at all the
  exact test that needs none is used (the sign test for paired differences, the permutation
  test for two separated arms), never an infinite t.
* **Multiple comparisons.** Holm's step-down correction over all comparisons a study makes
  (the confidence intervals are the unadjusted 95% ones).
  A difference is *clear* only when its Holm-adjusted p < ``ALPHA`` (0.05). An arm with fewer
  than two usable seeds is *not testable*: one seed never yields "clear".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from scipy import stats as sps

__all__ = [
    "ALPHA",
    "FAILED_ACCURACY",
    "Comparison",
    "Summary",
    "compare",
    "data_scale",
    "fmt",
    "holm",
    "holm_p",
    "no_spread",
    "p_is",
    "p_text",
    "summary",
    "t_se_df",
]

ALPHA = 0.05
FAILED_ACCURACY = 0.15  # chance is 0.10 on the 10-class datasets bnlab ships


@dataclass(frozen=True)
class Summary:
    """One metric of one arm over its seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def nonfinite(self) -> int:
        return sum(1 for v in self.values if not math.isfinite(v))

    @property
    def mean(self) -> float:
        return math.nan if self.nonfinite or not self.values else statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof 1); NaN with fewer than two finite values."""
        if self.nonfinite or self.n < 2:
            return math.nan
        return statistics.stdev(self.values)

    def text(self) -> str:
        """'0.825 +- 0.022', 'diverged 2/5' or '0.825 (1 seed)'."""
        if self.nonfinite:
            return f"diverged {self.nonfinite}/{self.n}"
        if self.n == 1:
            return f"{fmt(self.mean, math.nan)} (1 seed)"
        return f"{fmt(self.mean, self.std)}"


def summary(values: Sequence[float]) -> Summary:
    return Summary(tuple(float(v) for v in values))


def _digits(spread: float, reference: float) -> int:
    """Decimal places that show `spread` with two significant figures, or `reference` with
    three when there is no spread (at most 6)."""
    if math.isfinite(spread) and spread > 0:
        return max(0, min(6, 1 - math.floor(math.log10(spread))))
    if math.isfinite(reference) and reference != 0:
        return max(0, min(6, 2 - math.floor(math.log10(abs(reference)))))
    return 3


def fmt(mean: float, std: float, *, digits: int | None = None) -> str:
    """'mean +- std' rounded to the std's second significant figure ('0.825 +- 0.022',
    '2.30300 +- 0.00007'); the mean alone when `std` is NaN; 'nan' for a NaN mean."""
    if not math.isfinite(mean):
        return "nan" if math.isnan(mean) else f"{mean}"
    d = _digits(std, mean) if digits is None else digits
    if math.isnan(std):
        return f"{mean:.{d}f}"
    return f"{mean:.{d}f} +- {std:.{d}f}"


@dataclass(frozen=True)
class Comparison:
    """Arm `b` against arm `a` on `metric`: the difference ``b - a`` and its test."""

    label: str  # what is compared, e.g. "LeNet: BN vs no BN"
    metric: str
    a: Summary
    b: Summary
    # True/False: a higher value is better/worse (worded 'better'/'worse'); None: the metric
    # has no good direction (a drift against its noise floor), worded 'higher'/'lower'
    higher_is_better: bool | None
    test: str  # "paired t", "Welch t" or "not testable: <why>"
    diff: float
    low: float  # 95% confidence interval of diff
    high: float
    p: float
    p_holm: float = math.nan  # set by `holm` over the study's comparisons
    paired: bool | None = None  # how `compare` tested it (None: not testable)
    # False for a primary comparison whose exact test does not agree below
    # ``claims.EXACT_BELOW`` seeds (``claims.judge`` sets it): then it is not clear either.
    exact_agrees: bool = True

    @property
    def testable(self) -> bool:
        return not self.test.startswith("not testable")

    @property
    def clear(self) -> bool:
        return self.testable and self.p_holm < ALPHA and self.exact_agrees

    @property
    def word(self) -> str:
        """'better', 'worse' ('higher', 'lower' for a metric without a good direction), 'no
        clear difference' or 'not testable (...)'."""
        if not self.testable:
            return self.test
        if not self.clear:
            return "no clear difference"
        if self.higher_is_better is None:
            return "higher" if self.diff > 0 else "lower"
        return "better" if (self.diff > 0) == self.higher_is_better else "worse"

    def digits(self) -> int:
        """Decimal places fitted to the smaller spread of the two arms (or of the interval).
        A spread under ``NEGLIGIBLE_SPREAD`` of the other arm's (an arm that does not vary
        but for float rounding) does not set them: the difference is only known to the larger
        spread's precision."""
        spreads = [v for v in (self.a.std, self.b.std) if math.isfinite(v) and v > 0]
        spreads = [v for v in spreads if v >= NEGLIGIBLE_SPREAD * max(spreads)]
        if not spreads and math.isfinite(self.high - self.low) and self.high > self.low:
            spreads = [(self.high - self.low) / 4]
        return _digits(min(spreads) if spreads else math.nan, self.b.mean)

    def diff_text(self) -> str:
        """'+0.111 (95% CI +0.050 to +0.172)', or 'n/a' when not testable."""
        if not self.testable:
            return "n/a"
        d = self.digits()
        return f"{self.diff:+.{d}f} (95% CI {self.low:+.{d}f} to {self.high:+.{d}f})"

    def text(self) -> str:
        """For a verdict: '0.714 -> 0.825 (+0.111, 95% CI +0.050 to +0.172, Holm p = 0.003:
        better)'; the spreads and the test are in the study's comparisons table."""
        if not self.testable:
            return f"{self.a.text()} -> {self.b.text()} ({self.test})"
        d = self.digits()
        return (f"{self.a.mean:.{d}f} -> {self.b.mean:.{d}f} ({self.diff:+.{d}f}, 95% CI "
                f"{self.low:+.{d}f} to {self.high:+.{d}f}, Holm {p_is(self.p_holm)}: "
                f"{self.word})")

    def record(self) -> dict[str, object]:
        """The comparison as study.json stores it."""
        return {"label": self.label, "metric": self.metric, "test": self.test,
                "paired": self.paired, "higher_is_better": self.higher_is_better,
                "a": list(self.a.values), "b": list(self.b.values), "diff": self.diff,
                "ci95": [self.low, self.high], "p": self.p, "p_holm": self.p_holm,
                "clear": self.clear, "verdict": self.word}


def p_text(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_is(p: float) -> str:
    """'p < 0.001' or 'p = 0.031'."""
    text = p_text(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _untestable(label: str, metric: str, a: Summary, b: Summary, hib: bool | None,
                why: str) -> Comparison:
    return Comparison(label, metric, a, b, hib, f"not testable: {why}", math.nan, math.nan,
                      math.nan, math.nan)


def compare(a: Sequence[float], b: Sequence[float], *, metric: str, label: str,
            paired: bool, higher_is_better: bool | None = True) -> Comparison:
    """Test arm `b`'s values against arm `a`'s (see the module docstring for the rule)."""
    sa, sb = summary(a), summary(b)
    for s, name in ((sa, "first"), (sb, "second")):
        if s.nonfinite:
            return _untestable(label, metric, sa, sb, higher_is_better,
                               f"{s.nonfinite} of {s.n} seeds of the {name} arm diverged")
        if s.n < 2:
            return _untestable(label, metric, sa, sb, higher_is_better,
                               f"{s.n} seed{'' if s.n == 1 else 's'} in the {name} arm")
    if paired and sa.n != sb.n:
        raise ValueError(f"{label}: a paired test needs one value per seed in both arms "
                         f"({sa.n} vs {sb.n})")
    diff = sb.mean - sa.mean
    se, df = t_se_df(sa.values, sb.values, paired)
    test = "paired t" if paired else "Welch t"
    scale = data_scale(sa.values, sb.values)
    if no_spread(se, scale):  # no spread (up to float rounding): t is 0 or inf
        if abs(diff) <= SPREAD_RTOL * scale:  # a difference of rounding only is none
            diff = 0.0
        return _without_spread(label, metric, sa, sb, higher_is_better, paired, diff)
    half = float(sps.t.ppf(0.975, df)) * se
    p = float(2 * sps.t.sf(abs(diff) / se, df))
    return Comparison(label, metric, sa, sb, higher_is_better, test, diff, diff - half,
                      diff + half, p, paired=paired)


def t_se_df(a: Sequence[float], b: Sequence[float], paired: bool) -> tuple[float, float]:
    """Standard error and degrees of freedom of mean(b) - mean(a) for the t-test ``compare``
    runs: of the paired differences, or Welch's (Welch-Satterthwaite df; n_a + n_b - 2 when
    both arms have no spread). At least two finite values per arm."""
    if paired:
        d = [y - x for x, y in zip(a, b, strict=True)]
        return statistics.stdev(d) / math.sqrt(len(d)), len(d) - 1.0
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return 0.0, float(len(a) + len(b) - 2)
    return math.sqrt(va + vb), (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))


SPREAD_RTOL = 1e-12  # float rounding, relative to the data's scale
NEGLIGIBLE_SPREAD = 1e-3  # an arm's spread this far below the other's does not set the digits


def data_scale(a: Sequence[float], b: Sequence[float]) -> float:
    """The scale float rounding is relative to: the largest |value| of both arms."""
    return max((abs(v) for v in (*a, *b) if math.isfinite(v)), default=0.0)


def no_spread(se: float, scale: float) -> bool:
    """Whether a standard error is no spread at all, up to float rounding relative to the
    data's `scale` (``data_scale``; the same data in other units gives the same answer): then
    t is 0 or infinite and ``compare`` uses the exact test that needs no spread."""
    return se <= SPREAD_RTOL * scale


def _without_spread(label: str, metric: str, a: Summary, b: Summary, hib: bool | None,
                    paired: bool, diff: float) -> Comparison:
    """Arms whose values do not vary (accuracies are multiples of 1/n_test, so two seeds can
    tie exactly). A t statistic would be infinite and p = 0 from two seeds; instead the exact
    test that needs no spread: the sign test for paired differences that all agree (p =
    2 * 0.5^n), or the permutation test for two arms completely separated (p = 2 / C(na+nb,
    na)). Equal means give p = 1. The interval is the observed difference."""
    if diff == 0:
        p, test = 1.0, "exact (no spread)"
    elif paired:
        p, test = min(1.0, 2.0 ** (1 - a.n)), "sign test (no spread)"
    else:
        p, test = min(1.0, 2.0 / math.comb(a.n + b.n, a.n)), "permutation test (no spread)"
    return Comparison(label, metric, a, b, hib, test, diff, diff, diff, p, paired=paired)


def holm_p(ps: Sequence[float]) -> list[float]:
    """Holm-adjusted p values (same order); NaN (not tested) stays NaN, outside the family.

    Sorted by p, the k-th smallest of m tests gets ``max over j <= k of min(1, (m - j + 1) p_j)``
    (monotone), which controls the family-wise error rate at ALPHA.
    """
    tested = [i for i, p in enumerate(ps) if not math.isnan(p)]
    m = len(tested)
    adjusted = [math.nan] * len(ps)
    running = 0.0
    for rank, i in enumerate(sorted(tested, key=lambda i: ps[i])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons with Holm-adjusted p values (``holm_p``, same order); untestable ones
    unchanged."""
    adjusted = holm_p([c.p if c.testable else math.nan for c in comparisons])
    return [replace(c, p_holm=q) if c.testable else c
            for c, q in zip(comparisons, adjusted, strict=True)]
