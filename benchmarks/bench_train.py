"""End-to-end benchmark: 10-epoch LeNet-BN on Fashion-MNIST, bnlab's trainer vs the textbook.

    python benchmarks/bench_train.py [--epochs 10] [--seeds 3]

Both use batch 256, SGD lr 1.0 and test accuracy after every epoch; bnlab trains with its own
BatchNorm (norm="bnlab"). Four recipes, each run a separate process (so peak RSS is its own),
alternating seed by seed:

* ``textbook``: the textbook's code (benchmarks/textbook_recipe.py), the baseline;
* ``bnlab``: bnlab's trainer as the ``bnlab`` command runs it, with the command's memory
  policy (``bnlab.memory``: freed tensor memory kept for reuse);
* ``bnlab, system memory``: the same with ``BNLAB_MEMORY=system`` (glibc's default policy);
* ``textbook, reuse memory``: the control: the textbook's code under bnlab's memory policy,
  which says how much of the speed-up is the allocator's and how much bnlab's.

The table reports per-seed figures, then means and the ratios to the textbook's time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

BNLAB = """
import json, resource, sys, time
from bnlab import memory
from bnlab.train import TrainConfig, train
memory.set_policy(memory.policy_from_env())  # what the bnlab command does at start
epochs, seed, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t = time.perf_counter()
run = train(TrainConfig(model="lenet-bn", norm="bnlab", lr=1.0, epochs=epochs, seed=seed,
                        progress=False), out, log=lambda m: None)
wall = time.perf_counter() - t
f = run.final
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"recipe": "bnlab" if memory.current() == "reuse" else "bnlab, system memory",
                  "seed": seed, "wall_s": wall, "train_loss": f["train_loss"],
                  "train_acc": f["train_acc"], "test_acc": f["test_acc"],
                  "examples_per_sec": epochs * 60000 / wall, "peak_rss_mb": peak}))
"""


RECIPES = ("textbook", "bnlab", "bnlab, system memory", "textbook, reuse memory")


def run(cmd: list[str], memory: str) -> dict:
    """One recipe in a process of its own; adds the process's wall time (interpreter start,
    imports, data loading and setup included) to the recipe's own training time."""
    env = {**os.environ, "BNLAB_MEMORY": memory}
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return {**json.loads(out.stdout.strip().splitlines()[-1]),
            "process_s": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    textbook = [sys.executable, str(HERE / "textbook_recipe.py"), "--epochs", str(args.epochs)]
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            rows.append(run([*textbook, "--seed", str(seed)], "system"))
            for memory in ("reuse", "system"):
                rows.append(run([sys.executable, "-c", BNLAB, str(args.epochs), str(seed),
                                 f"{tmp}/run{seed}-{memory}"], memory))
            control = run([*textbook, "--seed", str(seed), "--memory", "reuse"], "reuse")
            rows.append({**control, "recipe": "textbook, reuse memory"})
    # "wall s": the time each recipe reports: the textbook's train_ch6 loop (its timer starts
    # after the data loaders and the optimizer exist), bnlab's whole train() call (data
    # loading, model and optimizer setup included). "process s": the whole process for both.
    print("| recipe | seed | wall s | process s | examples/s | peak RSS MB | train loss "
          "| test acc |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['seed']} | {r['wall_s']:.1f} | {r['process_s']:.1f} "
              f"| {r['examples_per_sec']:.0f} | {r['peak_rss_mb']:.0f} | {r['train_loss']:.3f} "
              f"| {r['test_acc']:.4f} |")
    n = args.seeds
    print(f"\nMeans over {n} seeds (std over seeds); speed-up = textbook's mean time / the "
          f"recipe's:\n")
    print("| recipe | mean wall s | speed-up (wall) | mean process s | speed-up (process) "
          "| test acc | peak RSS MB (max) |")
    print("|---|---|---|---|---|---|---|")
    textbook = [r for r in rows if r["recipe"] == "textbook"]
    base = {k: statistics.fmean(r[k] for r in textbook) for k in ("wall_s", "process_s")}
    acc = {}
    for recipe in RECIPES:
        mine = [r for r in rows if r["recipe"] == recipe]
        wall = {k: statistics.fmean(r[k] for r in mine) for k in ("wall_s", "process_s")}
        accs = [r["test_acc"] for r in mine]
        acc[recipe] = accs
        sd = statistics.stdev(accs) if n > 1 else 0.0
        print(f"| {recipe} | {wall['wall_s']:.1f} | {base['wall_s'] / wall['wall_s']:.2f}x "
              f"| {wall['process_s']:.1f} | {base['process_s'] / wall['process_s']:.2f}x "
              f"| {statistics.fmean(accs):.4f} +- {sd:.4f} "
              f"| {max(r['peak_rss_mb'] for r in mine):.0f} |")
    if n > 1:  # Welch's t for the accuracy difference: is it larger than the seed noise?
        a, b = acc["bnlab"], acc["textbook"]
        se = (statistics.variance(a) / n + statistics.variance(b) / n) ** 0.5
        diff = statistics.fmean(a) - statistics.fmean(b)
        print(f"\naccuracy difference bnlab - textbook {diff:+.4f}, Welch t = "
              f"{diff / se if se > 0 else float('nan'):.2f} (target: speed-up >= 4x at equal "
              f"accuracy)")


if __name__ == "__main__":
    main()
