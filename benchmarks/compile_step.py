"""Does torch.compile (inductor, CPU) speed up bnlab's LeNet-BN training step?

    python benchmarks/compile_step.py [--steps 60] [--memory reuse|system]

Three versions of one SGD step (batch 256, lr 1.0, the model built as bnlab's trainer builds it:
fused BatchNorm-sigmoid(-avg pool) layers, the kernels' operators visible to the compiler
through their fake implementations), timed side by side, step by step in rotating order after a
warm-up that includes the compilation:

* ``eager``: the trainer's step as it runs;
* ``compiled model``: ``torch.compile(model)``, the loss, backward and SGD update eager;
* ``compiled step``: ``torch.compile`` of the whole step function (forward, loss, backward,
  optimizer update).

Each version has its own copy of the model and its own optimizer, on the same batches.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bnlab import memory
from bnlab.data import load_split
from bnlab.train.build import make_model
from bnlab.train.config import TrainConfig


def stepper(model: torch.nn.Module, compile_model: bool) -> Callable:
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    net = torch.compile(model) if compile_model else model

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--memory", choices=memory.POLICIES, default="reuse")
    args = ap.parse_args()
    policy = memory.set_policy(args.memory)
    base = make_model(TrainConfig())
    steps = {"eager": stepper(copy.deepcopy(base), False),
             "compiled model": stepper(copy.deepcopy(base), True),
             "compiled step": torch.compile(stepper(copy.deepcopy(base), False))}
    train = load_split("fashion-mnist", "train", log=lambda _: None)
    images = train.images[: 256 * (args.steps + 3)].float().div(255).unsqueeze(1)
    labels = train.labels[: images.shape[0]]
    batches = [(images[i:i + 256], labels[i:i + 256]) for i in range(0, images.shape[0], 256)]
    compile_s = {}
    for name, step in steps.items():
        t = time.perf_counter()
        for x, y in batches[:3]:  # compilation (first call) and warm-up
            step(x, y)
        compile_s[name] = time.perf_counter() - t
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i, (x, y) in enumerate(batches[3:3 + args.steps]):
        for name in names[i % 3:] + names[:i % 3]:
            t = time.perf_counter()
            steps[name](x, y)
            times[name].append(time.perf_counter() - t)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, memory policy {policy}; "
          f"{args.steps} steps of batch 256, medians")
    print("| version | first 3 steps s (incl. compilation) | ms a step | vs eager |")
    print("|---|---|---|---|")
    eager = statistics.median(times["eager"])
    for name in names:
        ms = statistics.median(times[name])
        print(f"| {name} | {compile_s[name]:.1f} | {ms * 1e3:.2f} | {ms / eager:.2f}x |")


if __name__ == "__main__":
    main()
