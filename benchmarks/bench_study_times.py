"""How long each study takes here, at its default size, with the Ray workers `make docs` uses.

    python benchmarks/bench_study_times.py [--studies chapter lr ...] [--workers 2]
    python benchmarks/bench_study_times.py --from-runs runs/studies

The first form starts one fresh ``bnlab study NAME --workers W --threads 1`` process per study
into a fresh directory (nothing reused) and times it from start to exit: imports, loading the
data, starting Ray, every run and the analysis. The second reads what a ``make docs`` (or
``bnlab.studies.publish``) call that trained every run itself measured: each study's
``wall_time.this_call`` in ``DIR/NAME/study.json``, which is the whole study within that call
(Ray's start excepted, which publish does once). That is a measurement only where the call
trained every run itself (``rm -rf runs/studies && make docs``): a study whose call took less
than half its runs' time over its workers reused runs and is marked so; a directory where a
few runs were reused is not detected. The target is 10 minutes a study.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT_MIN = 10.0


def runs_of(record: dict) -> int:
    return sum(len(arm["runs"]) for arm in record["arms"])


def timed(name: str, workers: int) -> tuple[float, dict]:
    """Wall seconds of one fresh `bnlab study` process, and its study.json."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / name
        env = {**os.environ, "BNLAB_PROGRESS": "0"}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bnlab", "study", name, "--out", str(out),
                        "--workers", str(workers), "--threads", "1"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start, json.loads((out / "study.json").read_text())


def row(name: str, runs: int, seconds: float, note: str = "") -> str:
    minutes = seconds / 60
    mark = "yes" if minutes <= LIMIT_MIN else "**no**"
    return f"| {name} | {runs} | {minutes:.1f} min | {mark} | {note} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--studies", nargs="+", help="default: every registered study")
    p.add_argument("--workers", type=int, default=2, help="Ray workers of the runs started")
    p.add_argument("--from-runs", type=Path, metavar="DIR",
                   help="read a publish call's own timings instead of running anything")
    args = p.parse_args()
    print(f"| study | runs | wall time | <= {LIMIT_MIN:g} min | note |")
    print("|---|---|---|---|---|")
    if args.from_runs is not None:
        for path in sorted(args.from_runs.glob("*/study.json")):
            record = json.loads(path.read_text())
            if args.studies and record["name"] not in args.studies:
                continue
            wall = record["wall_time"]
            # a call that trained its runs spends at least their time over its workers
            workers = int(record.get("executor", {}).get("workers", 1))
            reused = wall["this_call"] < wall["training"] / (2 * workers)
            print(row(record["name"], runs_of(record), wall["this_call"],
                      "runs reused: not a measurement" if reused else
                      f"{workers} worker{'s' if workers != 1 else ''}"))
        return
    from bnlab.studies.registry import STUDIES

    for name in args.studies or list(STUDIES):
        seconds, record = timed(name, args.workers)
        print(row(name, runs_of(record), seconds), flush=True)


if __name__ == "__main__":
    main()
