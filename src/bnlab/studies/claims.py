"""Claims from the literature, declared before a study runs, and the one rule that words them.

A study declares one ``Claim`` per literature claim it tests: the metric, the direction the
paper says ``b - a`` goes, and the smallest effect that matters (``margin``). ``judge`` takes
each claim with its per-seed values and returns ``Judgement``s:

* the t-test of ``stats.compare`` (paired t on per-seed differences, or Welch t), Holm-corrected
  over the *primary* family only (the claims; every other comparison a study makes is
  exploratory, its own Holm family, and never worded as a verdict on the paper);
* an exact test beside it that needs no normality: the sign-flip test for paired values (all
  2^n sign patterns of the differences d_i, statistic mean(d)) or the permutation test for
  unpaired arms (all C(n_a + n_b, n_b) splits, statistic mean(b) - mean(a)); two-sided
  p = twice the smaller one-sided share (``exact``: the same as the share with |statistic| >=
  |observed| for the sign-flip test, whose null is symmetric). Its smallest possible p is
  2 / 2^n paired (0.0625 at n = 5) and 2 / C(n_a + n_b, n_b) unpaired;
* the minimum detectable effect (MDE) at ALPHA / m and POWER, and TOST against +-margin
  (Holm-corrected over the family like the others): ``bnlab.studies.power``, where their math
  is stated.

The rule (``wording``), equivalence first. *clear* = Holm p < ALPHA and, for n < 8 seeds, the
exact test's Holm p < ALPHA too.

1. TOST's Holm p < ALPHA (the effect lies inside +-margin): "does not reproduce", qualified
   "does not reproduce (a clear effect smaller than the margin)" when the difference is also
   clear (in either direction): an effect too small to be the one the paper reports;
2. else clear in the paper's direction: "reproduces"; clear the other way: "contradicts";
3. otherwise "not shown" (its MDE stands beside it in the text and the table), qualified
   "not shown (the exact test does not agree)" when the t-test alone is clear.

No other qualifier exists. "|effect| >= MDE yet not clear" cannot happen, so the rule does not
word it: a finite MDE at se > 0 is nc* se with power(nc*) = POWER = 0.8; power grows with nc
and at nc = t_crit it is below 0.7 for every df >= 1 (Welch's df is at least min(n) - 1), so
nc* > t_crit, and |diff| >= MDE gives |t| > t_crit,
raw p < ALPHA / m, and Holm p <= m p < ALPHA (Holm multiplies the k-th smallest p by
m - k + 1 <= m and takes the running maximum of values each <= m p_(k)). At se = 0 a finite
MDE is 0, which needs the exact floor f with m f < ALPHA: a nonzero effect then has raw p = f
(``compare``'s test without spread) and Holm p <= m f < ALPHA, clear; a zero effect has TOST
clear (t infinite, and each exact one-sided p is f / 2), so "does not reproduce" comes first.
(Tests: ``tests/studies/test_wording_rule.py``.)
For a primary comparison "better"/"worse" (``Comparison.word``) mean in the paper's direction
or against it (``Claim.higher_is_better``), and ``Comparison.clear`` is the rule's *clear*.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from bnlab.studies.exact import exact_floor, exact_p
from bnlab.studies.power import EXACT_BELOW, POWER, mde, se_df, tost
from bnlab.studies.stats import (
    ALPHA,
    Comparison,
    compare,
    holm,
    holm_p,
    p_is,
    p_text,
)

__all__ = [
    "EQUIVALENT_CLEAR",
    "EXACT_BELOW",
    "EXACT_DISAGREES",
    "NOT_RUN",
    "POWER",
    "WORDS",
    "Claim",
    "Judgement",
    "claims_headline",
    "claims_literature",
    "exact_agrees",
    "exploratory",
    "judge",
    "judge_keyed",
    "lead",
    "literature_text",
    "mde",
    "not_judged_text",
    "primary_table",
    "primary_text",
    "run_marks",
    "tost",
    "wording",
]

WORDS = ("reproduces", "contradicts", "not shown", "does not reproduce")
EXACT_DISAGREES = "not shown (the exact test does not agree)"  # t-test clear, exact test not
EQUIVALENT_CLEAR = "does not reproduce (a clear effect smaller than the margin)"


@dataclass(frozen=True)
class Claim:
    """One literature claim a study tests, declared in the study module before it runs."""

    key: str  # short id, unique in the study, e.g. "higher-lr-high-end"
    statement: str  # the claim in one sentence, as the paper makes it
    source: str  # "Ioffe & Szegedy 2015"
    metric: str  # e.g. "test_acc"
    direction: int  # +1: the paper says b - a > 0; -1: b - a < 0
    margin: float  # smallest effect that matters (> 0, metric units): the TOST bounds
    a: str = ""  # label of the reference arm/group, for the table
    b: str = ""

    def __post_init__(self) -> None:
        if not self.key or not self.statement or not self.source:
            raise ValueError(f"claim {self.key!r}: key, statement and source must be given")
        if self.direction not in (1, -1):
            raise ValueError(f"claim {self.key!r}: direction must be +1 (b - a > 0) or -1 "
                             f"(b - a < 0), not {self.direction!r}")
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin)
                and self.margin > 0):
            raise ValueError(f"claim {self.key!r}: margin must be a finite number > 0 in "
                             f"{self.metric} units, not {self.margin!r}")

    @property
    def higher_is_better(self) -> bool:
        """'better' for this claim's comparison means the paper's direction."""
        return self.direction > 0

    @property
    def label(self) -> str:
        return f"{self.b} vs {self.a}" if self.a and self.b else self.key

    def record(self) -> dict[str, object]:
        return {"key": self.key, "statement": self.statement, "source": self.source,
                "metric": self.metric, "direction": self.direction, "margin": self.margin,
                "a": self.a, "b": self.b}


@dataclass(frozen=True)
class Judgement:
    """One primary comparison, judged."""

    claim: Claim
    comparison: Comparison  # from stats.compare, with p_holm over the PRIMARY family only
    p_exact: float  # sign-flip (paired) / permutation (unpaired) test, exact; Holm'd
    mde: float  # minimum detectable effect at these seeds (ALPHA / m, POWER)
    p_tost: float  # two one-sided tests against +-margin; Holm'd
    wording: str  # one of WORDS or "not testable (...)"
    paired: bool = True

    def record(self) -> dict[str, object]:
        """The judgement as study.json stores it (values per seed included, so anyone can
        recompute it: ``judge`` on ``a``, ``b`` and ``paired``)."""
        c = self.comparison
        return {"claim": self.claim.record(), "label": c.label, "metric": c.metric,
                "test": c.test, "paired": self.paired, "a": list(c.a.values),
                "b": list(c.b.values), "diff": c.diff, "ci95": [c.low, c.high], "mde": self.mde,
                "mde_text": self.mde_text(),
                "p": c.p, "p_holm": c.p_holm, "p_exact": self.p_exact, "p_tost": self.p_tost,
                "wording": self.wording}

    def mde_text(self) -> str:
        if math.isinf(self.mde):
            na, nb = self.comparison.a.n, self.comparison.b.n
            return f"none at {na} seeds" if na == nb else f"none at {na} + {nb} seeds"
        return "n/a" if math.isnan(self.mde) else f"{self.mde:.{self.comparison.digits()}f}"

    def text(self) -> str:
        """'BN vs no BN (Ioffe & Szegedy 2015): +0.111 (95% CI ...), MDE 0.020, Holm
        p = 0.003, exact p = 0.031: reproduces'."""
        c = self.comparison
        head = f"{c.label} ({self.claim.source})"
        if not c.testable:
            return f"{head}: {self.wording}"
        return (f"{head}: {c.diff_text()}, MDE {self.mde_text()}, Holm {p_is(c.p_holm)}, "
                f"exact Holm {p_is(self.p_exact)}, TOST (+-{self.claim.margin:.3g}) Holm "
                f"{p_is(self.p_tost)}: {self.wording}")


def exact_agrees(c: Comparison, p_exact: float) -> bool:
    """Whether the exact test lets the t-test's verdict stand: always from EXACT_BELOW seeds,
    below that only when its Holm p < ALPHA too."""
    return min(c.a.n, c.b.n) >= EXACT_BELOW or p_exact < ALPHA


def wording(c: Comparison, p_exact: float, p_tost: float, direction: int) -> str:
    """The one rule (module docstring) from Holm-corrected p values: one of WORDS, with its
    qualifier beside it where one applies. Equivalence is consulted first."""
    if not c.testable:
        return c.test.replace("not testable: ", "not testable (", 1) + ")"
    t_clear = c.p_holm < ALPHA
    clear = t_clear and exact_agrees(c, p_exact)
    if p_tost < ALPHA:
        return EQUIVALENT_CLEAR if clear else "does not reproduce"
    if clear:
        return "reproduces" if (c.diff > 0) == (direction > 0) else "contradicts"
    return EXACT_DISAGREES if t_clear else "not shown"


def _holm(ps: Sequence[float], extra: int) -> list[float]:
    """Holm over `ps` and `extra` tests that did not run, counted as p = 1 (conservative)."""
    return holm_p([*ps, *([1.0] * extra)])[:len(ps)]


def judge(primary: Sequence[tuple[Claim, Sequence[float], Sequence[float], bool]],
          *, family: int | None = None) -> list[Judgement]:
    """(claim, a values per seed, b values per seed, paired) -> judgements; Holm over this
    family only; wording by the one fixed rule (``wording``). `family`: the declared number of
    claims when some of them could not be judged (``judge_keyed``): Holm's m stays at it, the
    missing tests counted as p = 1, a conservative choice (no claim gains from another's
    absence)."""
    keys = [claim.key for claim, *_ in primary]
    if len(set(keys)) != len(keys):
        raise ValueError(f"claims must have distinct keys within a study: {keys}")
    extra = 0 if family is None else family - len(primary)
    if extra < 0:
        raise ValueError(f"judge: family {family} is smaller than the {len(primary)} claims "
                         f"judged")
    raw = [compare(a, b, metric=claim.metric, label=claim.label, paired=paired,
                   higher_is_better=claim.higher_is_better) for claim, a, b, paired in primary]
    comps = [replace(c, p_holm=q) if c.testable else c
             for c, q in zip(raw, _holm([c.p if c.testable else math.nan for c in raw], extra),
                             strict=True)]
    m = sum(1 for c in comps if c.testable) + extra
    raw_exact, raw_tost, mdes = [], [], []
    for (claim, a, b, paired), c in zip(primary, comps, strict=True):
        if not c.testable:
            raw_exact.append(math.nan)
            raw_tost.append(math.nan)
            mdes.append(math.nan)
            continue
        raw_exact.append(exact_p(a, b, paired=paired))
        raw_tost.append(tost(a, b, claim.margin, paired=paired))
        floor = exact_floor(len(a), len(b), paired=paired)
        reachable = min(len(a), len(b)) >= EXACT_BELOW or floor * m < ALPHA
        mdes.append(mde(*se_df(a, b, paired), m) if reachable else math.inf)
    p_exact, p_tost = _holm(raw_exact, extra), _holm(raw_tost, extra)
    return [Judgement(claim, replace(c, exact_agrees=not c.testable or exact_agrees(c, pe)),
                      pe, md, pt, wording(c, pe, pt, claim.direction), paired)
            for (claim, _, _, paired), c, pe, pt, md
            in zip(primary, comps, p_exact, p_tost, mdes, strict=True)]


def not_judged_text(not_judged: Mapping[str, str] | None) -> str:
    """The declared claims not judged, each with its reason: '[key] not judged (reason)'."""
    return "; ".join(f"[{k}] not judged ({why})" for k, why in (not_judged or {}).items())


def _joined(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def primary_text(judgements: Sequence[Judgement],
                 not_judged: Mapping[str, str] | None = None) -> str:
    """The verdict's first sentence: every claim's wording with its evidence, then the claims
    not judged with their reasons."""
    m, untestable = len(judgements), sum(1 for j in judgements if not j.comparison.testable)
    skipped = len(not_judged or {})
    if not m:  # nothing judged: no rule to state, no wording
        return f"Claims ({skipped} declared, none judged): {not_judged_text(not_judged)}."
    return (f"Claims ({m} primary comparison{'s' if m != 1 else ''}"
            + (f", {untestable} not testable" if untestable else "")
            + (f", {skipped} declared claim{'s' if skipped != 1 else ''} not judged"
               if skipped else "")
            + f", Holm over the {m + skipped} declared claim{'s' if m + skipped != 1 else ''}; "
            f"'reproduces'/'contradicts' need Holm p < 0.05, and below {EXACT_BELOW} seeds the "
            f"exact test too; 'does not reproduce' needs equivalence within the margin): "
            + _joined("; ".join(f"[{j.claim.key}] {j.text()}" for j in judgements),
                      not_judged_text(not_judged)) + ".")


def claims_headline(judgements: Sequence[Judgement],
                    not_judged: Mapping[str, str] | None = None) -> str:
    """The headline's claims part, first in it: 'Claims: [key] wording; [key] not judged
    (reason).'"""
    return "Claims: " + _joined("; ".join(f"[{j.claim.key}] {j.wording}" for j in judgements),
                                not_judged_text(not_judged)) + "."


def claims_literature(judgements: Sequence[Judgement],
                      not_judged: Mapping[str, str] | None = None) -> str:
    """The literature sentence's claims part, first in it: ``literature_text``, then the
    claims not judged ('claim [key]: not judged (reason)': a sentence may not open with a
    bracket, the runner's marks do), and a full stop."""
    skipped = "; ".join(f"claim [{k}]: not judged ({why})" for k, why in
                        (not_judged or {}).items())
    return _joined(literature_text(judgements), skipped) + "."


def run_marks(quick: bool, seeds: int, ran_on: str | None) -> str:
    """The bracketed marks the runner puts first in every text a reader may quote alone:
    quick mode, a single seed, and the network and data when they are not bnlab's own
    (`ran_on`, None for bnlab's). '' for a full run on bnlab's network."""
    mark = ("[quick mode: a small subset, not evidence] " if quick else
            f"[{seeds} seed: no difference can be tested] " if seeds < 2 else "")
    return mark + (f"[ran on {ran_on}] " if ran_on is not None else "")


def lead(claims_part: str, rest: str) -> str:
    """A published text: the claims part generated from the judgements, then the study's own."""
    return f"{claims_part} {rest}" if rest else claims_part


def literature_text(judgements: Sequence[Judgement]) -> str:
    """Against the literature, one clause per claim: 'Ioffe & Szegedy 2015, "BN ...":
    reproduces'."""
    return "; ".join(f"{j.claim.source}, \"{j.claim.statement.rstrip('.')}\": {j.wording}"
                     for j in judgements)


def primary_table(judgements: Sequence[Judgement]) -> str:
    """The primary comparisons as Markdown: effect with its CI, MDE, p values and wording."""
    lines = ["| primary comparison (claim) | metric | effect b - a (95% CI) | MDE | test | p | "
             "Holm p | exact Holm p | TOST Holm p (margin) | wording |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for j in judgements:
        c = j.comparison
        lines.append(f"| {c.label} ({j.claim.source}: {j.claim.statement}) | {c.metric} | "
                     f"{c.diff_text()} | {j.mde_text()} | {c.test.split(':')[0]} | "
                     f"{p_text(c.p)} | {p_text(c.p_holm)} | {p_text(j.p_exact)} | "
                     f"{p_text(j.p_tost)} (+-{j.claim.margin:.3g}) | {j.wording} |")
    return "\n".join(lines) + "\n"


def exploratory(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Every other comparison a study makes: its own Holm family (reported, never a verdict)."""
    return holm([replace(c, p_holm=math.nan) for c in comparisons])


K = TypeVar("K", bound=Hashable)


NOT_RUN = "its comparison did not run (an arm it needs did not run or gave no values)"


def judge_keyed(raw: Mapping[K, Comparison], claims: Mapping[K, Claim]
                ) -> tuple[list[Judgement], dict[K, Comparison], dict[str, str]]:
    """A study's comparisons by key, split in two families: those whose key names a claim are
    judged (``judge``, Holm over the *declared* claims: one whose comparison did not run counts
    as p = 1), the rest exploratory (Holm over the rest). Returns the judgements, every
    comparison as tested in `raw`'s order, and the claims not judged with the reason (claim
    key -> reason, for the record's ``not_judged``)."""
    claimed = [k for k in raw if k in claims]
    primary = judge([(claims[k], raw[k].a.values, raw[k].b.values, bool(raw[k].paired))
                     for k in claimed], family=len(claims))
    rest = [k for k in raw if k not in claims]
    out = dict(zip(rest, exploratory([raw[k] for k in rest]), strict=True))
    out.update(zip(claimed, (j.comparison for j in primary), strict=True))
    missing = {claims[k].key: NOT_RUN for k in claims if k not in raw}
    return primary, {k: out[k] for k in raw}, missing
