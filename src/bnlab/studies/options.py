"""The options of ``bnlab study``, stated once: the flags, their defaults and the checks.

``StudyOptions`` is to ``bnlab study`` what ``TrainConfig`` is to ``bnlab train``: the
command's parser is generated from it (``bnlab.settings.add_flags``) and ``run_study`` takes
its fields. ``STUDY_SEEDS`` is the one number of seeds per arm that a study runs unless it
says otherwise (``Study.seeds``); ``--quick`` runs one.

This module imports no study, so that ``bnlab --help`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bnlab.settings import like, setting, validate
from bnlab.studies import STUDY_NAMES
from bnlab.train.config import MAX_COUNT, TrainConfig

__all__ = ["QUICK_SEEDS", "SHORT_STUDY_SEEDS", "STUDY_SEEDS", "StudyOptions"]

# Seeds per arm: from 8 paired seeds the t-test decides alone (``studies.claims``); at 5 the exact
# sign-flip test that must agree below 8 cannot go under p = 2 / 2^5 = 0.0625, so no claim
# could ever be called.
STUDY_SEEDS = 8
QUICK_SEEDS = 1  # --quick: a smoke test, not evidence
# Seeds of the studies cheap enough to run 10 (placement, inference-stats, landscape, ics): from
# 8 seeds the t-test decides alone (``studies.claims``); at 5 paired seeds the exact sign-flip
# test's smallest p is 2 / 2^5 = 0.0625, so nothing paired can be called "clear" at all.
SHORT_STUDY_SEEDS = 10

MAX_WORKERS = 4096  # runs in flight at once: far above any cluster a study would use


def _workers(text: str) -> int | None:
    """--workers: a count, or ``auto`` (None: as many as fit the cores)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be a number of workers, or auto") from None


def _address(text: str) -> str | None:
    return None if text.strip() and len(text) <= 1000 else "must be host:port or a Ray URL"


def _out_dir(text: str) -> str:
    """--out: a non-empty name that is not an existing file (as every command's --out)."""
    if not text.strip():
        raise ValueError("expected a directory name, got an empty one")
    if os.path.exists(text) and not os.path.isdir(text):
        raise ValueError(f"{text!r} is a file, not a directory")
    return text


@dataclass(frozen=True)
class StudyOptions:
    """One ``bnlab study`` command: which study, on what, how many seeds, where."""

    name: str = setting("lr", "which study", choices=STUDY_NAMES, positional=True)
    quick: bool = setting(False, f"{QUICK_SEEDS} seed on small subsets: a smoke test, not "
                          f"evidence")
    out: str | None = setting(None, "output directory", parse=_out_dir, metavar="OUT",
                              unset="runs/study-NAME, runs/study-NAME-quick with --quick",
                              bad=("", " "))
    seeds: int | None = setting(None, "seeds per arm", low=1, high=MAX_COUNT,
                                unset=f"the study's own, {STUDY_SEEDS} unless the study list "
                                f"below says otherwise; {QUICK_SEEDS} with --quick")
    analyze_only: bool = setting(False, "rebuild figure, table and verdict from the saved "
                                 "runs; train nothing")
    model: str | None = like(
        TrainConfig, "model", None, help="run the arms on this network: a bnlab model or "
        "package.module:factory (arms that need the textbook's network are listed as not run)",
        unset="each arm's own")
    dataset: str | None = like(
        TrainConfig, "dataset", None, help="run the arms on this dataset: a bnlab dataset or "
        "package.module:factory returning (train_data, test_data)", unset="each arm's own")
    # Settings of every arm's runs that do not change what a study measures: TrainConfig's.
    data_dir: str | None = like(TrainConfig, "data_dir")
    threads: int | None = like(TrainConfig, "threads")
    # Where the runs train (bnlab.studies.sweep): here, or as Ray tasks here or on a cluster.
    workers: int | None = setting(1, "runs at a time as Ray tasks, each with --threads CPUs; "
                                  "1 trains them one after another in this process, without "
                                  "Ray", low=1, high=MAX_WORKERS, parse=_workers, metavar="N",
                                  unset="auto: as many as fit the cores")
    address: str | None = setting(None, "run on the Ray cluster at this address, e.g. "
                                  "10.0.0.5:6379", metavar="ADDR", check=_address,
                                  unset="$RAY_ADDRESS, else this machine")

    def __post_init__(self) -> None:
        validate(self)

    def seeds_for(self, study_seeds: int) -> int:
        """How many seeds run: --seeds, else one with --quick, else the study's own."""
        return self.seeds or (QUICK_SEEDS if self.quick else study_seeds)

    def out_dir(self) -> str:
        return self.out or f"runs/study-{self.name}{'-quick' if self.quick else ''}"

    @classmethod
    def from_args(cls, args: Any) -> StudyOptions:
        """The options in an argparse namespace (other attributes, other commands' flags,
        are left alone)."""
        return cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__ if hasattr(args, k)})

