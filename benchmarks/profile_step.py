"""Where a LeNet-BN training step spends its time: the profile behind BENCHMARKS.md.

    python benchmarks/profile_step.py [--steps 30] [--no-fuse] [--memory reuse|system]

Builds the model exactly as bnlab's trainer does (`make_model`: Xavier init, fused
BatchNorm-sigmoid(-avg pool) layers where the fast kernels are available), runs plain SGD steps
(lr 1.0, batch 256) on real Fashion-MNIST batches under torch.profiler, and prints the mean
time of a step and what each kind of work takes of it, grouped from the profiler's self-times
(on the calling thread) by operator name. The BatchNorm kernels are operators
(``bnlab::batch_norm*``) and appear under their own line; what the profiler does not attribute
to any operator (Python, the module calls) is the difference between the wall time and the
operators' total. The memory policy is the command line's (``bnlab.memory``: ``reuse``).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from bnlab import memory
from bnlab.data import load_split
from bnlab.train.build import make_model
from bnlab.train.config import TrainConfig

# (group, predicate on the profiler's event name), first match wins.
GROUPS = [
    ("convolution backward", lambda n: "convolution_backward" in n),
    ("convolution forward", lambda n: "convolution" in n or "mkldnn" in n or "conv2d" in n),
    ("BatchNorm (bnlab operators, forward and backward, fused layers)",
     lambda n: "bnlab::" in n or "BatchNormNode" in n),
    ("linear layers (mm, addmm)", lambda n: n in ("aten::mm", "aten::addmm", "aten::t")),
    ("loss (log_softmax, nll)", lambda n: "softmax" in n or "nll" in n),
    ("optimizer (SGD update, zeroing grads)", lambda n: "_foreach" in n or "add_" in n
     or "zero" in n or "Optimizer" in n),
]


def group_of(name: str) -> str:
    for group, match in GROUPS:
        if match(name):
            return group
    return "the rest (allocation, views, autograd bookkeeping, Python)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--no-fuse", action="store_true")
    ap.add_argument("--memory", choices=memory.POLICIES, default="reuse")
    args = ap.parse_args()
    policy = memory.set_policy(args.memory)
    config = TrainConfig(fuse=not args.no_fuse)
    model = make_model(config)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    train = load_split("fashion-mnist", "train", log=lambda _: None)
    images = train.images[: 256 * (args.steps + 5)].float().div(255).unsqueeze(1)
    labels = train.labels[: images.shape[0]]
    batches = [(images[i:i + 256], labels[i:i + 256]) for i in range(0, images.shape[0], 256)]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for x, y in batches[:5]:  # warm-up
        step(x, y)
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x, y in batches[5:]:
            step(x, y)
    per_step = (time.perf_counter() - t) / args.steps * 1e3
    totals: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        totals[group_of(e.key)] += e.self_cpu_time_total / 1e3 / args.steps  # ms a step
    totals["not attributed to an operator (Python, module calls)"] = max(
        0.0, per_step - sum(totals.values()))
    fused = any(type(m).__name__ == "BatchNormSigmoid" for m in model.modules())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, memory policy {policy}, "
          f"fused layers: {fused}; "
          f"{args.steps} steps of batch 256: {per_step:.2f} ms a step (under the profiler)")
    print("| piece | ms a step | share of a step |")
    print("|---|---|---|")
    for group, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {ms:.2f} | {100 * ms / per_step:.0f}% |")

if __name__ == "__main__":
    main()
