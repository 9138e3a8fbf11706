"""What the memory policy (bnlab.memory) changes: the same work under glibc's default and under
``reuse``, each policy in a process of its own.

    python benchmarks/bench_memory.py [--reps 9]

Per policy, on a (64, 64, 56, 56) float32 tensor (51 MB), contiguous and channels_last: a copy
into a preallocated tensor (no allocation: the memory's speed), ``clone()`` (a fresh tensor),
and training forward+backward of ATen's BatchNorm and bnlab's; medians of ``--reps`` calls,
the implementations alternating. Then the ratio system / reuse per row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, statistics, sys, time
import torch
import torch.nn.functional as F
import bnlab.functional as BF
from bnlab import memory
policy, reps = sys.argv[1], int(sys.argv[2])
memory.set_policy(policy)
rows = {}
for fmt in ("contiguous", "channels_last"):
    x = torch.randn(64, 64, 56, 56)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    src, dst = x.clone(), torch.empty_like(x)
    x.requires_grad_(True)
    g = torch.randn_like(x)
    w = torch.rand(64, requires_grad=True)
    b = torch.randn(64, requires_grad=True)
    rm, rv = torch.zeros(64), torch.ones(64)
    def train(fn):
        x.grad = w.grad = b.grad = None
        fn(x, rm, rv, w, b, True, 0.1, 1e-5).backward(g)
    work = {"copy into a preallocated tensor": lambda: dst.copy_(src),
            "clone (a fresh tensor)": lambda: src.clone(),
            "aten train fwd+bwd": lambda: train(F.batch_norm),
            "bnlab train fwd+bwd": lambda: train(BF.batch_norm)}
    times = {k: [] for k in work}
    for fn in work.values():
        fn()
    for r in range(reps):
        for k, fn in work.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    for k, v in times.items():
        rows[f"{k} | {fmt}"] = statistics.median(v) * 1e3
print(json.dumps({"policy": memory.current(), "rows": rows}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    res = {}
    for policy in ("system", "reuse"):
        out = subprocess.run([sys.executable, "-c", CHILD, policy, str(args.reps)],
                             capture_output=True, text=True, check=True)
        res[policy] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"(64, 64, 56, 56) float32, medians of {args.reps} calls, one process per policy "
          f"(applied: {res['system']['policy']}, {res['reuse']['policy']})")
    print("| work | layout | system ms | reuse ms | system / reuse |")
    print("|---|---|---|---|---|")
    for row, sys_ms in res["system"]["rows"].items():
        reuse_ms = res["reuse"]["rows"][row]
        print(f"| {row} | {sys_ms:.2f} | {reuse_ms:.2f} | {sys_ms / reuse_ms:.2f} |")


if __name__ == "__main__":
    main()
