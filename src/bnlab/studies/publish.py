"""``make docs``: every study's default run, then docs/ rebuilt from the results.

``python -m bnlab.studies.publish`` trains each registered study into ``runs/studies/NAME``
(finished runs are reused, interrupted ones resumed), copies its record (study.json, table.md,
table.csv, verdict, figure.png; not the run directories) into ``docs/studies/NAME``, and then
builds docs/report/ and docs/studies.md from those records alone, so
``tests/test_docs_fresh.py`` can rebuild the pages and compare. ``--analyze-only`` rebuilds
from the saved runs without training (after a change to analysis code only); ``--only NAME``
limits the studies redone (the pages always cover every record in docs/studies).
``--workers N`` trains N runs at a time on a local Ray instance (``bnlab.studies.sweep``; make
docs passes 2), ``--address`` on a Ray cluster; each study.json names where its runs ran.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from bnlab.files import LIMITS, read_bytes, remove_tree, write_files
from bnlab.report.html import build_report
from bnlab.report.studies_doc import write_studies_doc
from bnlab.studies.base import run_study
from bnlab.studies.registry import STUDIES
from bnlab.studies.sweep import Sweep, session

__all__ = ["RECORD", "publish"]

RECORD = ("study.json", "table.md", "table.csv", "verdict", "figure.png")


def publish(runs: Path, docs: Path, only: Sequence[str] = (), *, analyze_only: bool = False,
            threads: int | None = None, sweep: Sweep | None = None) -> None:
    names = list(only or STUDIES)
    sweep = sweep or Sweep()
    with nullcontext() if analyze_only else session(sweep):  # Ray started once for all
        for name in names:  # every study first: docs/ is written only after the last
            # analysis, so each study records the tree as it was (clean), not dirtied by the
            # records before it
            run_study(STUDIES[name], runs / name, analyze_only=analyze_only, threads=threads,
                      sweep=sweep)
    for name in names:
        out = runs / name
        record = docs / "studies" / name
        fix = f"run the study again: bnlab study {name} --out {out}"
        remove_tree(record, root=docs)
        write_files(record, {f: read_bytes(out / f, fix, limit=LIMITS["figure"], root=out)
                             for f in RECORD})
    records: list[str | Path] = [docs / "studies" / n for n in STUDIES
                                 if (docs / "studies" / n).is_dir()]
    build_report(records, docs / "report")
    write_studies_doc(records, docs / "studies.md", docs / "report" / "figures")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bnlab.studies.publish", description=__doc__)
    p.add_argument("--runs", type=Path, default=Path("runs/studies"))
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.add_argument("--only", nargs="+", default=(), choices=list(STUDIES), metavar="NAME")
    p.add_argument("--analyze-only", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=1,
                   help="runs at a time, on a local Ray instance when above 1 (default: 1)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                   help="train on the Ray cluster at this address (default: $RAY_ADDRESS)")
    args = p.parse_args(argv)
    publish(args.runs, args.docs, args.only, analyze_only=args.analyze_only,
            threads=args.threads, sweep=Sweep(workers=args.workers, address=args.address))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
