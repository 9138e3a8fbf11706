"""Op-level benchmark: bnlab's BatchNorm vs ATen's (F.batch_norm) vs a naive autograd composite,
and both against the memory floor.

    python benchmarks/bench_bn.py [--reps 15] [--threads N] [--device cpu|cuda]
                                  [--memory reuse|system] [--only TEXT] [--peak-gbs GB/S]

Training-mode forward+backward (float32) on the textbook LeNet's BN shapes and larger ones,
contiguous and channels_last, plus eval-mode forward. "bnlab" is the default path (the compiled
kernels of bnlab.norm.kernels, the operators torch.ops.bnlab.*, for float32/float64 CPU tensors),
"reference" the readable implementation they are tested against (backends.forced("reference")).
Implementations are timed side by side: every repetition times each of them, in rotating
order, so machine noise hits all alike (a repetition of a small shape times a run of calls
lasting ~2 ms, not one 0.1 ms call); the table reports per-call medians and the ratios to ATen.

The floor: the fewest tensor passes any implementation must make, timed at this machine's speed
for this tensor. Training forward+backward touches x (read), y (written), then x and dy (read)
and dx (written): 5 passes; eval forward 2 (x, y). A pass is timed in the same rotation as half
of a copy of a same-sized tensor into a preallocated one (one read and one write), so
floor = passes / 2 * copy time. ``bnlab/floor`` is the kernel's time over that; a
kernel that reads x twice in the forward and x and dy twice in the backward (every pass from
memory) makes 8 passes, 1.6x the floor. The memory policy (``bnlab.memory``) is ``reuse``, the
command line's, unless ``--memory system``: then each fresh output tensor also pays its page
faults, which the copy into a preallocated tensor does not.

On CUDA (or with ``--peak-gbs`` anywhere) a second table sets each row against the card: the
floor's bytes (passes x the tensor's bytes) over the call's time is the bandwidth the op
achieves, in GB/s and as a share of the card's peak, 2 (double data rate) x memory clock x bus
width as the device's properties report them (or ``--peak-gbs``, a datasheet figure, where the
driver does not say).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import bnlab.functional as BF
from bnlab import memory
from bnlab.norm import backends, kernels

SHAPES = [(256, 6, 24, 24), (256, 16, 8, 8), (256, 120), (256, 84), (64, 64, 56, 56),
          (32, 256, 14, 14), (4096, 1024)]


def naive(x, rm, rv, w, b, training, momentum, eps):
    """The textbook's composite: plain tensor ops, autograd does the backward."""
    dims = (0, *range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if training:
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        with torch.no_grad():
            n = x.numel() / x.shape[1]
            rm.mul_(1 - momentum).add_(mean.flatten(), alpha=momentum)
            rv.mul_(1 - momentum).add_(var.flatten() * n / (n - 1), alpha=momentum)
    else:
        mean, var = rm.view(shape), rv.view(shape)
    return (x - mean) / torch.sqrt(var + eps) * w.view(shape) + b.view(shape)


def reference(*args):
    """bnlab's readable implementation (the reference backend forced)."""
    with backends.forced("reference"):
        return BF.batch_norm(*args)


IMPLS: dict[str, Callable] = {"aten": F.batch_norm, "bnlab": BF.batch_norm,
                              "reference": reference, "naive": naive}
PASSES = {True: 5, False: 2}  # the floor's tensor passes: training fwd+bwd, eval fwd


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bandwidth(device: str, mb: int = 512, reps: int = 5) -> float:
    """Streaming copy bandwidth in GB/s (read + write) of a preallocated buffer."""
    src = torch.ones(mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / min(times) / 1e9


def peak_gbs(props) -> float | None:
    """A card's peak memory bandwidth in GB/s from its CUDA device properties: 2 transfers a
    clock x memory clock (kHz) x bus width (bits) / 8; None where the driver reports neither."""
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None


def card_peak_gbs(device: str, override: float | None) -> float | None:
    """``--peak-gbs`` if given, else the CUDA device's own figure (None on the CPU)."""
    if override is not None or device != "cuda":
        return override
    return peak_gbs(torch.cuda.get_device_properties(torch.cuda.current_device()))


def step(impl: Callable, x, g, rm, rv, w, b, training: bool) -> None:
    if training:
        impl(x, rm, rv, w, b, True, 0.1, 1e-5).backward(g)  # backward follows forward's path
    else:
        with torch.no_grad():
            impl(x, rm, rv, w, b, False, 0.1, 1e-5)


def measure(shape, fmt, training: bool, reps: int, device: str) -> dict[str, float]:
    """Median seconds per call of each implementation, and of "copy" (x into a preallocated
    tensor: the floor's unit), timed in one rotation."""
    c = shape[1]
    x = torch.randn(shape, device=device)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(training)
    g = torch.randn_like(x)
    w = torch.rand(c, device=device, requires_grad=training)
    b = torch.randn(c, device=device, requires_grad=training)
    rm, rv = torch.zeros(c, device=device), torch.ones(c, device=device)
    src, dst = x.detach().clone(), torch.empty_like(x)

    def call(name: str) -> None:
        if name == "copy":
            dst.copy_(src)
            return
        x.grad = w.grad = b.grad = None
        step(IMPLS[name], x, g, rm, rv, w, b, training)

    names = [*IMPLS, "copy"]
    times: dict[str, list[float]] = {n: [] for n in names}
    # Warm-up, and the number of calls each timing covers: enough for ~2 ms (a single call of
    # a small shape lasts ~0.1 ms, where timer and scheduler jitter would dominate).
    for name in names:
        call(name)
    sync(device)
    t = time.perf_counter()
    call("aten")
    sync(device)
    calls = max(1, min(50, int(2e-3 / max(time.perf_counter() - t, 1e-6))))
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            sync(device)
            t = time.perf_counter()
            for _ in range(calls):
                call(name)
            sync(device)
            times[name].append((time.perf_counter() - t) / calls)
    return {n: statistics.median(v) for n, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--memory", choices=memory.POLICIES, default="reuse")
    ap.add_argument("--only", default="", help="measure only shapes whose text contains this")
    ap.add_argument("--peak-gbs", type=float, default=None,
                    help="the card's peak memory bandwidth (GB/s) where the driver does not say")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench_bn.py: torch {torch.__version__} sees no CUDA device here; "
                         "run it on a GPU host (make setup installs the CUDA build there)")
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = memory.set_policy(args.memory)
    bw = bandwidth(args.device)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(kernels.status())
    print(f"torch {torch.__version__}, device {name}, threads {torch.get_num_threads()}, "
          f"memory policy {policy}, streaming copy bandwidth {bw:.1f} GB/s (512 MiB), "
          f"{args.reps} reps, medians")
    peak = card_peak_gbs(args.device, args.peak_gbs)
    if args.device == "cuda" or peak:
        print("peak memory bandwidth: "
              + (f"{peak:.0f} GB/s; the copy reaches {bw / peak:.0%} of it" if peak else
                 "unknown (give it with --peak-gbs)"))
    achieved = []
    print("| mode | shape | format | aten ms | bnlab ms | reference ms | naive ms | floor ms "
          "| bnlab/aten | reference/aten | naive/aten | aten/floor | bnlab/floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for training in (True, False):
        for shape in [s for s in SHAPES if args.only in str(s)]:
            for fmt in (("contiguous", "channels_last") if len(shape) == 4 else ("contiguous",)):
                t = measure(shape, fmt, training, args.reps, args.device)
                floor = PASSES[training] / 2 * t["copy"]
                print(f"| {'train fwd+bwd' if training else 'eval fwd'} | {shape} | {fmt} | "
                      f"{t['aten'] * 1e3:.3f} | {t['bnlab'] * 1e3:.3f} | "
                      f"{t['reference'] * 1e3:.3f} | {t['naive'] * 1e3:.3f} | "
                      f"{floor * 1e3:.3f} | {t['bnlab'] / t['aten']:.2f} | "
                      f"{t['reference'] / t['aten']:.2f} | {t['naive'] / t['aten']:.2f} | "
                      f"{t['aten'] / floor:.2f} | {t['bnlab'] / floor:.2f} |", flush=True)
                nbytes = PASSES[training] * math.prod(shape) * 4  # float32
                achieved.append((training, shape, fmt, nbytes / t["aten"] / 1e9,
                                 nbytes / t["bnlab"] / 1e9))
    if args.device == "cuda" or peak:
        print("\nAchieved bandwidth: the floor's bytes (passes x tensor bytes) / time a call; "
              f"peak {f'{peak:.0f} GB/s' if peak else 'unknown'}, copy {bw:.0f} GB/s\n")
        print("| mode | shape | format | aten GB/s | bnlab GB/s | aten/peak | bnlab/peak |")
        print("|---|---|---|---|---|---|---|")
        def share(gbs: float) -> str:
            return f"{gbs / peak:.0%}" if peak else "-"

        for training, shape, fmt, aten_gbs, ours_gbs in achieved:
            print(f"| {'train fwd+bwd' if training else 'eval fwd'} | {shape} | {fmt} | "
                  f"{aten_gbs:,.1f} | {ours_gbs:,.1f} | {share(aten_gbs)} | {share(ours_gbs)} |")


if __name__ == "__main__":
    main()
