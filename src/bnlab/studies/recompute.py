"""Recompute a study record's published comparisons from its own per-seed values.

A record (``study.json``) stores, for every primary judgement and every exploratory
comparison, the per-seed values it was computed from, how they were tested (paired or not)
and every published number. ``differences(record)`` runs the same statistics again on those
values (``claims.judge`` over the primary family, ``stats.compare`` + one Holm family over the
exploratory ones) and lists every published field that does not match, so a record edited by
hand, or analysed by other code than the current, cannot pass ``tests/test_docs_fresh.py``.
``claim_differences`` compares the record's claims with the ones the study module declares
(key, statement, source, metric, direction and margin; the arm labels may be specialised), so
a direction flipped together with its wording in study.json is caught, and requires every
declared claim in the record: judged, or in ``not_judged`` with its reason (Holm's m is the
declared family, so the judged p values recompute only with the not-judged ones counted).
``text_differences`` regenerates each text's claims part with the functions the runner uses
(``base.lead_texts``), from the judged claims and the ``not_judged`` ones with their reasons,
and compares exactly: the headline must lead with ``claims_headline``, the literature
sentence with ``claims_literature``, and the verdict's first line must be ``primary_text``,
each after exactly the marks the runner puts first (``claims.run_marks``: "[quick mode: ...] ",
"[1 seed: ...] ", "[ran on ...] ", from the record's own quick, seeds and subject; any other
bracketed prefix is caught); a record that judges no claim may not word one in any of them. What
follows a claims part is the study's own text from its runs, which only a rerun can check.
Floats match within ``RTOL`` (JSON keeps floats exactly; the margin covers a different
libm); a non-finite float is stored as null (the MDE's text says which).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from bnlab.studies.claims import (
    WORDS,
    Claim,
    Judgement,
    claims_headline,
    claims_literature,
    exploratory,
    judge,
    primary_text,
    run_marks,
)
from bnlab.studies.stats import compare

__all__ = ["RTOL", "claim_differences", "declared_claims", "differences", "text_differences"]

SAME = ("key", "statement", "source", "metric", "direction", "margin")  # a claim's identity

RTOL = 1e-9
VERDICT_WORDS = tuple(w for w in WORDS if w != "not shown")  # the words of a judged claim


def _values(v: Sequence[Any]) -> list[float]:
    return [math.nan if x is None else float(x) for x in v]


def _direction(v: Any) -> bool | None:
    """A record's ``higher_is_better``: true, false, or null (a metric without a good
    direction, ``stats.Comparison``)."""
    if v is None or isinstance(v, bool):
        return v
    raise ValueError(f"higher_is_better is {v!r}, not true, false or null")


def _same(x: Any, y: Any) -> bool:
    """Equal as JSON would store them (NaN as None), floats within RTOL."""
    if isinstance(x, float) and not math.isfinite(x):
        x = None
    if isinstance(y, float) and not math.isfinite(y):
        y = None
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not (
            isinstance(x, bool) or isinstance(y, bool)):
        return x == y or math.isclose(x, y, rel_tol=RTOL, abs_tol=1e-15)
    if isinstance(x, Mapping) and isinstance(y, Mapping):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y, strict=True))
    return bool(x == y)


def _diff(where: str, published: Mapping[str, Any], again: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(published) | set(again))
    return [f"{where}: {k} published {published.get(k)!r}, recomputed {again.get(k)!r}"
            for k in keys if not _same(published.get(k), again.get(k))]


def differences(record: Mapping[str, Any]) -> list[str]:
    """Every published comparison field that its per-seed values do not reproduce."""
    name = record.get("name", "?")
    if "primary" not in record or "exploratory" not in record:
        return [f"{name}: the record has no primary/exploratory comparisons (an older format)"]
    out: list[str] = []
    primary = record["primary"]
    try:
        judged = _judged(record)
    except (KeyError, TypeError, ValueError) as e:
        return [f"{name}: primary comparisons cannot be recomputed ({e})"]
    for p, j in zip(primary, judged, strict=True):
        out += _diff(f"{name} primary [{p['claim'].get('key')}]", p, j.record())
    try:
        again = exploratory([compare(_values(c["a"]), _values(c["b"]), metric=c["metric"],
                                     label=c["label"], paired=bool(c["paired"]),
                                     higher_is_better=_direction(c["higher_is_better"]))
                             for c in record["exploratory"]])
    except (KeyError, TypeError, ValueError) as e:
        return [*out, f"{name}: exploratory comparisons cannot be recomputed ({e})"]
    for c, r in zip(record["exploratory"], again, strict=True):
        out += _diff(f"{name} exploratory [{c['label']} {c['metric']}]", c, r.record())
    return out


def declared_claims(analyze: Any) -> dict[str, Claim]:
    """Every ``Claim`` the module of a study's `analyze` function declares at module level
    (alone, or in a dict, tuple or list), by key; none for a callable without a module."""
    found: dict[str, Claim] = {}

    def visit(v: Any, depth: int) -> None:
        if isinstance(v, Claim):
            found[v.key] = v
        elif depth and isinstance(v, Mapping):
            for x in v.values():
                visit(x, depth - 1)
        elif depth and isinstance(v, (tuple, list)):
            for x in v:
                visit(x, depth - 1)

    module = sys.modules.get(getattr(analyze, "__module__", None) or "")
    for value in (vars(module).values() if module is not None else ()):
        visit(value, 2)
    return found


def claim_differences(record: Mapping[str, Any], declared: Mapping[str, Claim]) -> list[str]:
    """The record's claims that the study does not declare as they are stored, and the
    declared claims the record neither judges nor lists in ``not_judged``."""
    name, out = record.get("name", "?"), []
    seen = []
    for p in record.get("primary", []):
        stored = p.get("claim", {})
        seen.append(stored.get("key"))
        claim = declared.get(stored.get("key"))
        if claim is None:
            out.append(f"{name}: claim {stored.get('key')!r} is not declared by the study")
            continue
        now = claim.record()
        out += [f"{name} claim [{claim.key}]: {k} recorded {stored.get(k)!r}, declared {now[k]!r}"
                for k in SAME if not _same(stored.get(k), now[k])]
    not_judged = record.get("not_judged", {})
    if not isinstance(not_judged, Mapping):
        return [*out, f"{name}: not_judged is not a mapping of claim keys to reasons"]
    for key, reason in not_judged.items():
        if key not in declared or key in seen or not (
                isinstance(reason, str) and reason and "\n" not in reason):
            out.append(f"{name}: not_judged [{key}] must be a declared claim that is not judged, "
                       f"with its reason on one line ({reason!r})")
    out += [f"{name}: declared claim [{k}] is neither judged nor listed as not judged"
            for k in declared if k not in seen and k not in not_judged]
    return out


def _judged(record: Mapping[str, Any]) -> list[Judgement]:
    not_judged = record.get("not_judged", {})
    if not isinstance(not_judged, Mapping):
        raise TypeError("not_judged must map claim keys to reasons")
    return judge([(Claim(**p["claim"]), _values(p["a"]), _values(p["b"]), bool(p["paired"]))
                  for p in record["primary"]], family=len(record["primary"]) + len(not_judged))


def expected_marks(record: Mapping[str, Any]) -> str:
    """The marks the runner put first in the record's texts (``claims.run_marks``), from the
    record's own fields: quick mode, its seeds, and the network and data it ran on where they
    are not bnlab's own."""
    from bnlab.studies.subject import Subject  # the default subject's record

    ran = record.get("ran") or {}
    default = record.get("subject") == Subject().record()
    return run_marks(bool(record.get("quick")), int(record.get("seeds") or 0),
                     None if default else str(ran.get("on")))


def _leads(text: str, part: str, marks: str) -> bool:
    """Whether `text` is `marks` + `part` alone, or followed by a space."""
    return text == marks + part or text.startswith(marks + part + " ")


def _after(text: str, part: str, marks: str) -> str:
    """`text` less its `marks` and, where it leads with it, the generated claims `part`."""
    text = text.removeprefix(marks)
    return text[len(part):] if part and text.startswith(part) else text


def text_differences(record: Mapping[str, Any], verdict: str | None = None) -> list[str]:
    """Whether the record's headline and literature sentence, and the `verdict` file's first
    line when given, lead with exactly the claims part the current code generates from the
    record's judged claims (module docstring)."""
    name = record.get("name", "?")
    if "primary" not in record:
        return [f"{name}: the record has no primary comparisons (an older format)"]
    try:
        judged = _judged(record)
    except (KeyError, TypeError, ValueError) as e:
        return [f"{name}: primary comparisons cannot be recomputed ({e})"]
    skipped = record.get("not_judged") or {}
    try:
        marks = expected_marks(record)
    except (TypeError, ValueError) as e:
        return [f"{name}: the record's quick, seeds or subject cannot be read ({e})"]
    parts = {"headline": claims_headline(judged, skipped),
             "literature": claims_literature(judged, skipped),
             "verdict": primary_text(judged, skipped)}
    out = []
    if not judged:  # no claim judged: no text may word one (outside the generated part)
        texts = {"headline": record.get("headline"), "literature": record.get("literature"),
                 "verdict": verdict}
        out = [f"{name}: the {k} words a claim ({w!r}) but the record judges none"
               for k, t in texts.items()
               for w in VERDICT_WORDS
               if w in _after(str(t or ""), parts[k] if skipped else "", marks)]
        if not skipped:  # no claim declared: no claims part
            return out
    for key in ("headline", "literature"):
        part = parts[key]
        if not _leads(str(record.get(key, "")), part, marks):
            out.append(f"{name}: the {key} does not lead with exactly its claims' wording "
                       f"({part[:160]!r})")
    if verdict is not None:
        first = verdict.split("\n", 1)[0]
        expected = parts["verdict"]
        if first != marks + expected:
            out.append(f"{name}: the verdict's first line is not exactly its claims' wording "
                       f"({expected[:120]!r}...)")
    return out
