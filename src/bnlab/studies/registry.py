"""The studies by name: ``bnlab study NAME``."""

from __future__ import annotations

from bnlab.studies import axes, batch_size, chapter, lr
from bnlab.studies.base import Study

STUDIES: dict[str, Study] = {s.name: s for s in (chapter.STUDY, lr.STUDY, batch_size.STUDY,
                                                 axes.STUDY)}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}")
    return STUDIES[name]
