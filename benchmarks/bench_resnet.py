"""A real network: one ResNet-18 training step (CIFAR stem, batch 128, float32) with torch's
BatchNorm against bnlab's, side by side, and BatchNorm's share of the step.

    python benchmarks/bench_resnet.py [--reps 6] [--threads N] [--memory reuse|system]
                                      [--device cpu|cuda]

Three models with the same weights: ``torch`` (nn.BatchNorm2d, nn.ReLU), ``bnlab`` (bnlab's
BatchNorm2d as a drop-in, the ReLU separate) and ``bnlab fused`` (what bnlab's trainer runs:
``bnlab.norm.fuse`` turns each [BatchNorm, ReLU] into one layer, 9 of the 20). A step is
zero_grad, forward, cross-entropy, backward and an SGD update (momentum 0.9) on one fixed
random batch. Every repetition times each model once, in rotating order, for both memory
layouts (contiguous and channels_last); the table gives medians and the ratio to torch.
Then torch.profiler runs 3 steps of each model and sums the self time of the operators that
belong to BatchNorm (forward and backward, fused or not) and to the ReLUs, as a share of the
profiled step. The memory policy (``bnlab.memory``) is the command line's, ``reuse``, unless
``--memory system``. With ``--device cuda`` the models and the batch live on the GPU, each timed
step ends with the device synchronized, and the shares are of the kernels' device time (each
kernel counted once, under the operator that launched it).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import DeviceType
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


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def batch(layout: torch.memory_format, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=layout)
    return x.to(device), torch.randint(0, 10, (128,)).to(device)


def timed(reps: int, layout: torch.memory_format, device: str) -> dict[str, float]:
    nets = models()
    x, y = batch(layout, device)
    steps = {}
    for name, net in nets.items():
        net.to(device=device, memory_format=layout).train()
        steps[name] = stepper(net, x, y)
        steps[name]()  # warm-up: allocations, oneDNN primitives
        steps[name]()
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            t = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in times.items()}


def self_ms(event, device: str) -> float:
    """An operator's own time in ms: CPU time, or on CUDA the device time of the kernels it
    launched itself (a kernel's time sits under its launching operator, so none counts twice)."""
    if device == "cpu":
        return event.self_cpu_time_total / 1e3
    return getattr(event, "self_device_time_total", 0.0) / 1e3


def shares(layout: torch.memory_format, device: str) -> dict[str, tuple[float, float, float]]:
    """Per model: (profiled ms a step, BatchNorm ms a step, ReLU ms a step)."""
    out = {}
    x, y = batch(layout, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    for name, net in models().items():
        step = stepper(net.to(device=device, memory_format=layout).train(), x, y)
        step()
        step()
        sync(device)
        with profile(activities=activities) as prof:
            for _ in range(3):
                step()
            sync(device)
        # Operators only (device_type CPU): on CUDA their self device time holds their kernels.
        events = [e for e in prof.key_averages() if e.device_type == DeviceType.CPU]
        total = sum(self_ms(e, device) for e in events) / 3
        bn = sum(self_ms(e, device) for e in events if any(k in e.key for k in BN_OPS)) / 3
        relu = sum(self_ms(e, device) for e in events
                   if any(e.key.startswith(k) for k in RELU_OPS)) / 3
        out[name] = (total, bn, relu)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--memory", choices=memory.POLICIES, default="reuse")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench_resnet.py: torch {torch.__version__} sees no CUDA device here; "
                         "run it on a GPU host (make setup installs the CUDA build there)")
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = memory.set_policy(args.memory)
    print(kernels.status())
    card = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {card}, threads {torch.get_num_threads()}, "
          f"memory policy {policy}, {args.reps} reps, medians; ResNet-18 (CIFAR stem), "
          "batch 128, float32")
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    print("| layout | torch step ms | bnlab step ms | bnlab fused step ms | bnlab/torch "
          "| fused/torch |")
    print("|---|---|---|---|---|---|")
    for label, layout in layouts.items():
        t = timed(args.reps, layout, args.device)
        print(f"| {label} | {t['torch'] * 1e3:.0f} | {t['bnlab'] * 1e3:.0f} | "
              f"{t['bnlab fused'] * 1e3:.0f} | {t['bnlab'] / t['torch']:.3f} | "
              f"{t['bnlab fused'] / t['torch']:.3f} |", flush=True)
    kind = "self time" if args.device == "cpu" else "kernels' device time"
    print(f"\nShare of a profiled step (torch.profiler {kind}, mean of 3 steps):\n")
    print("| layout | model | step ms | BatchNorm ms | BatchNorm share | ReLU ms | "
          "BatchNorm + ReLU share |")
    print("|---|---|---|---|---|---|---|")
    for label, layout in layouts.items():
        for name, (total, bn, relu) in shares(layout, args.device).items():
            print(f"| {label} | {name} | {total:.0f} | {bn:.1f} | {bn / total:.1%} | "
                  f"{relu:.1f} | {(bn + relu) / total:.1%} |", flush=True)


if __name__ == "__main__":
    main()
