"""End-to-end benchmark: 10-epoch LeNet-BN on Fashion-MNIST, bnlab's trainer vs the textbook.

    python benchmarks/bench_train.py [--epochs 10] [--seeds 3]

Both use batch 256, SGD lr 1.0 and test accuracy after every epoch; bnlab trains with its own
BatchNorm (norm="bnlab"). Each run is a separate process (so peak RSS is its own), the two
recipes alternate seed by seed, and the table reports per-seed and mean figures and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

BNLAB = """
import json, resource, sys, time
from bnlab.train import TrainConfig, train
epochs, seed, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t = time.perf_counter()
run = train(TrainConfig(model="lenet-bn", norm="bnlab", lr=1.0, epochs=epochs, seed=seed,
                        progress=False), out, log=lambda m: None)
wall = time.perf_counter() - t
f = run.final
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"recipe": "bnlab", "seed": seed, "wall_s": wall, "train_loss": f["train_loss"],
                  "train_acc": f["train_acc"], "test_acc": f["test_acc"],
                  "examples_per_sec": epochs * 60000 / wall, "peak_rss_mb": peak}))
"""


def run(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            rows.append(run([sys.executable, str(HERE / "textbook_recipe.py"), "--epochs",
                             str(args.epochs), "--seed", str(seed)]))
            rows.append(run([sys.executable, "-c", BNLAB, str(args.epochs), str(seed),
                             f"{tmp}/run{seed}"]))
    print("| recipe | seed | wall s | examples/s | peak RSS MB | train loss | test acc |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['seed']} | {r['wall_s']:.1f} | {r['examples_per_sec']:.0f} "
              f"| {r['peak_rss_mb']:.0f} | {r['train_loss']:.3f} | {r['test_acc']:.4f} |")
    stats = {k: {m: [r[m] for r in rows if r["recipe"] == k]
                 for m in ("wall_s", "test_acc", "peak_rss_mb")} for k in ("textbook", "bnlab")}
    mean = {k: {m: statistics.fmean(v) for m, v in d.items()} for k, d in stats.items()}
    sd = {k: {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in d.items()}
          for k, d in stats.items()}
    n = args.seeds
    print(f"\nmean wall time over {n} seeds: textbook {mean['textbook']['wall_s']:.1f} s, bnlab "
          f"{mean['bnlab']['wall_s']:.1f} s; speed-up "
          f"{mean['textbook']['wall_s'] / mean['bnlab']['wall_s']:.2f}x (target >= 4x)")
    print(f"mean final test accuracy: textbook {mean['textbook']['test_acc']:.4f} +- "
          f"{sd['textbook']['test_acc']:.4f}, bnlab {mean['bnlab']['test_acc']:.4f} +- "
          f"{sd['bnlab']['test_acc']:.4f} (std over seeds); peak RSS bnlab "
          f"{max(stats['bnlab']['peak_rss_mb']):.0f} MB at most")
    if n > 1:  # Welch's t for the accuracy difference: is it larger than the seed noise?
        se = (sd["textbook"]["test_acc"] ** 2 / n + sd["bnlab"]["test_acc"] ** 2 / n) ** 0.5
        diff = mean["bnlab"]["test_acc"] - mean["textbook"]["test_acc"]
        print(f"accuracy difference bnlab - textbook {diff:+.4f}, Welch t = "
              f"{diff / se if se > 0 else float('nan'):.2f}")

if __name__ == "__main__":
    main()
