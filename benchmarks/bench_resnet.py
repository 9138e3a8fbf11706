"""A real network: one ResNet-18 training step (CIFAR stem, batch 128, float32) with torch's
BatchNorm against bnlab's, side by side, and BatchNorm's share of the step.

    python benchmarks/bench_resnet.py [--reps 6] [--threads N] [--memory reuse|system]

Three models with the same weights: ``torch`` (nn.BatchNorm2d, nn.ReLU), ``bnlab`` (bnlab's
BatchNorm2d as a drop-in, the ReLU separate) and ``bnlab fused`` (what bnlab's trainer runs:
``bnlab.norm.fuse`` turns each [BatchNorm, ReLU] into one layer, 9 of the 20). A step is
zero_grad, forward, cross-entropy, backward and an SGD update (momentum 0.9) on one fixed
random batch. Every repetition times each model once, in rotating order, for both memory
layouts (contiguous and channels_last); the table gives medians and the ratio to torch.
Then torch.profiler runs 3 steps of each model and sums the self time of the operators that
belong to BatchNorm (forward and backward, fused or not) and to the ReLUs, as a share of the
profiled step. The memory policy (``bnlab.memory``) is the command line's, ``reuse``, unless
``--memory system``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bnlab import memory
from bnlab.models import resnet18_cifar
from bnlab.norm import kernels
from bnlab.norm.fused import fuse

BN_OPS = ("batch_norm", "bnlab::")  # aten::native_batch_norm(_backward), bnlab::batch_norm*
RELU_OPS = ("aten::relu", "aten::clamp_min", "aten::threshold_backward")


def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    ours = resnet18_cifar(norm="bnlab")
    theirs = resnet18_cifar(norm="torch")
    theirs.load_state_dict(ours.state_dict())
    return {"torch": theirs, "bnlab": ours, "bnlab fused": fuse(copy.deepcopy(ours))}


def stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def timed(reps: int, layout: torch.memory_format) -> dict[str, float]:
    nets = models()
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (128,))
    steps = {}
    for name, net in nets.items():
        net.to(memory_format=layout).train()
        steps[name] = stepper(net, x, y)
        steps[name]()  # warm-up: allocations, oneDNN primitives
        steps[name]()
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in times.items()}


def shares(layout: torch.memory_format) -> dict[str, tuple[float, float, float]]:
    """Per model: (profiled ms a step, BatchNorm ms a step, ReLU ms a step)."""
    out = {}
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (128,))
    for name, net in models().items():
        step = stepper(net.to(memory_format=layout).train(), x, y)
        step()
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 3e3
        bn = sum(e.self_cpu_time_total for e in events
                 if any(k in e.key for k in BN_OPS)) / 3e3
        relu = sum(e.self_cpu_time_total for e in events
                   if any(e.key.startswith(k) for k in RELU_OPS)) / 3e3
        out[name] = (total, bn, relu)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--memory", choices=memory.POLICIES, default="reuse")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = memory.set_policy(args.memory)
    print(kernels.status())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, memory policy "
          f"{policy}, {args.reps} reps, medians; ResNet-18 (CIFAR stem), batch 128, float32")
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    print("| layout | torch step ms | bnlab step ms | bnlab fused step ms | bnlab/torch "
          "| fused/torch |")
    print("|---|---|---|---|---|---|")
    for label, layout in layouts.items():
        t = timed(args.reps, layout)
        print(f"| {label} | {t['torch'] * 1e3:.0f} | {t['bnlab'] * 1e3:.0f} | "
              f"{t['bnlab fused'] * 1e3:.0f} | {t['bnlab'] / t['torch']:.3f} | "
              f"{t['bnlab fused'] / t['torch']:.3f} |", flush=True)
    print("\nShare of a profiled step (torch.profiler self time, mean of 3 steps):\n")
    print("| layout | model | step ms | BatchNorm ms | BatchNorm share | ReLU ms | "
          "BatchNorm + ReLU share |")
    print("|---|---|---|---|---|---|---|")
    for label, layout in layouts.items():
        for name, (total, bn, relu) in shares(layout).items():
            print(f"| {label} | {name} | {total:.0f} | {bn:.1f} | {bn / total:.1%} | "
                  f"{relu:.1f} | {(bn + relu) / total:.1%} |", flush=True)


if __name__ == "__main__":
    main()
