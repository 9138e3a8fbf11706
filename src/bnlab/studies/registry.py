"""The studies by name: ``bnlab study NAME``."""

from __future__ import annotations

from bnlab.studies import (
    axes,
    batch_size,
    chapter,
    ics,
    inference_stats,
    landscape,
    lr,
    momentum,
    placement,
    reproduce,
    running_averages,
    weight_decay,
    why_lr,
)
from bnlab.studies.base import Study

STUDIES: dict[str, Study] = {s.name: s for s in (
    reproduce.STUDY, chapter.STUDY, lr.STUDY, batch_size.STUDY, inference_stats.STUDY,
    running_averages.STUDY, momentum.STUDY, axes.STUDY, ics.STUDY, placement.STUDY,
    landscape.STUDY, weight_decay.STUDY, why_lr.STUDY)}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}")
    return STUDIES[name]
