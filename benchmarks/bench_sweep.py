"""Studies on Ray: wall time with 1 and 2 workers, Ray's overhead, and a 10-seed `lr` estimate.

    python benchmarks/bench_sweep.py [--studies momentum placement lr] [--seeds 2]

Every measurement is a fresh ``bnlab study`` process into a fresh directory (nothing reused),
timed from start to exit, so Python's and torch's imports, loading the data and starting Ray
are all in it:

1. each study in quick mode (at its default size with ``--full``) with ``--seeds`` seeds, one
   thread per run, ``--workers 1`` (in process, no Ray) and ``--workers 2`` (a local Ray
   instance): the speed-up;
2. Ray's overhead: the first study with ``--threads 2`` in process and on Ray with one worker
   of two threads (``--workers auto`` on a 2-core machine), per run; and ``ray.init`` plus
   ``ray.shutdown`` alone;
3. the full `lr` study with one seed, one thread per run, two workers: its mean run time, from
   which the workers a 10-seed `lr` study needs to finish in 10 minutes follow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def study(name: str, out: Path, *flags: str) -> tuple[float, dict]:
    """Wall seconds of one `bnlab study` process, and its study.json."""
    env = {**os.environ, "BNLAB_PROGRESS": "0"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bnlab", "study", name, "--out", str(out), *flags],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, json.loads((out / "study.json").read_text())


def runs(record: dict) -> int:
    return sum(len(arm["runs"]) for arm in record["arms"])


def ray_start_stop() -> float:
    code = ("import time, ray; t = time.perf_counter(); ray.init(address='local', num_cpus=2, "
            "include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False); "
            "ray.shutdown(); print(time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--studies", nargs="+", default=["momentum", "placement", "lr"])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--skip-lr", action="store_true", help="skip part 3 (the full lr study)")
    p.add_argument("--full", action="store_true",
                   help="parts 1 and 2 at the studies' default size instead of --quick")
    p.add_argument("--skip-overhead", action="store_true", help="skip part 2")
    args = p.parse_args()
    sized = [*([] if args.full else ["--quick"]), "--seeds", str(args.seeds)]
    size = "default-size" if args.full else "quick"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"## 1. {size} studies, {args.seeds} seeds, 1 thread per run (wall s)\n")
        print("| study | runs | 1 worker (in process) | 2 workers (Ray) | speed-up |")
        print("|---|---|---|---|---|")
        on_two: dict[str, dict] = {}
        for name in args.studies:
            one, rec = study(name, root / f"{name}-1", *sized, "--threads", "1")
            two, on_two[name] = study(name, root / f"{name}-2", *sized, "--threads", "1",
                                      "--workers", "2")
            print(f"| {name} | {runs(rec)} | {one:.1f} | {two:.1f} | {one / two:.2f}x |",
                  flush=True)

        if "lr" in on_two and args.full and args.seeds == 1:
            estimate(on_two["lr"], 600.0)
        if args.skip_overhead:
            return
        name = args.studies[0]
        here, rec = study(name, root / "over-1", *sized, "--threads", "2")
        on_ray, _ = study(name, root / "over-ray", *sized, "--workers", "auto", "--threads", "2")
        n = runs(rec)
        init = ray_start_stop()
        print(f"\n## 2. Ray's overhead ({name}, {n} runs, 2 threads per run)\n")
        print(f"in process {here:.1f} s; Ray, one worker {on_ray:.1f} s: "
              f"{(on_ray - here) / n:.2f} s per run, all included; ray.init + shutdown alone "
              f"{init:.1f} s")

        if not args.skip_lr:
            wall, rec = study("lr", root / "lr-full", "--seeds", "1", "--threads", "1",
                              "--workers", "2")
            print(f"\n(the full lr study took {wall:.1f} s of wall time)")
            estimate(rec, 600 - init)


def estimate(rec: dict, budget: float) -> None:
    """Part 3: from a 1-seed `lr` record run on 2 workers of 1 thread, the workers a 10-seed
    `lr` study needs to finish its runs within `budget` seconds."""
    n = runs(rec)
    per_run = rec["wall_time"]["training"] / n
    print(f"\n## 3. The full lr study, 1 seed: {n} runs, 2 workers of 1 thread\n")
    print(f"mean run {per_run:.2f} s (training only, two at a time)")
    total = 10 * n * per_run
    need = math.ceil(total / budget)
    print(f"10 seeds = {10 * n} runs = {total:.0f} s of runs: about {need} workers of "
          f"1 thread finish them in {budget:.0f} s (at this run time, one core each)")


if __name__ == "__main__":
    main()
