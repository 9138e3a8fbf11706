"""Shared wording of the fair accuracy: the running-average and PreciseBN evaluations.

A study claims "better"/"worse" (and so "agrees") only when both evaluations give the same
word; otherwise it says the two disagree and what each says.
"""

from __future__ import annotations

from collections.abc import Sequence

from bnlab.studies.stats import Comparison

__all__ = ["disagreement", "fair_word"]


def fair_word(cs: Sequence[Comparison | None]) -> str:
    """One word from the evaluations (running averages first, then PreciseBN; None or a
    missing second: that evaluation was not made): the common word when every evaluation made
    gives it, else 'the two evaluations disagree (running averages: X; PreciseBN: Y)'."""
    words = [c.word for c in cs if c is not None]
    if len(set(words)) <= 1:
        return words[0] if words else "not tested"
    return f"the two evaluations disagree ({disagreement(cs)})"


def disagreement(cs: Sequence[Comparison | None]) -> str:
    """'running averages: X; PreciseBN: Y': what each evaluation made says."""
    words = [c.word for c in cs if c is not None]
    return "; ".join(f"{name}: {word}" for name, word in zip(
        ("running averages", "PreciseBN"), words, strict=False))

