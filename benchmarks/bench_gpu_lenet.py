"""LeNet-BN training throughput with the whole dataset on the device (the GPU target: at least
1,000,000 training examples/s on an H100).

    python benchmarks/bench_gpu_lenet.py [--device cuda] [--epochs 3] [--batch-sizes 256,1024,4096]

Fashion-MNIST's 60,000 training images are moved to the device once (as float32, x / 255);
each epoch draws a random permutation on the device and trains LeNet-BN (bnlab's BatchNorm,
fused layers as bnlab's trainer builds them; on CUDA bnlab runs ATen's cuDNN batch norm under
its checks) with plain SGD, lr 1.0, no host-device copy inside the loop. Per batch size, two
versions: ``eager`` and ``compiled`` (``torch.compile`` of the whole step). The first epoch is
a warm-up (and compilation); the others are timed with the device synchronized, and the table
reports examples/s, the final training loss, and the test accuracy after the last epoch
(evaluated on the device in batches of 10,000). ``--device cpu`` runs the same script on the
CPU (a check of the script itself; the target is a GPU's).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bnlab.data import load_split
from bnlab.train.build import make_model
from bnlab.train.config import TrainConfig


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def on_device(split: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_split("fashion-mnist", split, log=lambda _: None)
    x = data.images.to(device).float().div_(255).unsqueeze(1)
    return x, data.labels.to(device).long()


def run(device: str, batch: int, epochs: int, compiled: bool, train, test) -> dict:
    torch.manual_seed(0)
    model = make_model(TrainConfig(batch_size=batch)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = train

    def step(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.detach()

    fn = torch.compile(step) if compiled else step
    n = x.shape[0] - x.shape[0] % batch  # whole batches only: one shape for the compiler
    seen, elapsed, loss = 0, 0.0, torch.zeros((), device=device)
    for epoch in range(epochs):
        order = torch.randperm(x.shape[0], device=device)[:n].view(-1, batch)
        sync(device)
        t = time.perf_counter()
        for idx in order:
            loss = fn(x[idx], y[idx])
        sync(device)
        if epoch > 0:  # epoch 0: warm-up and compilation
            elapsed += time.perf_counter() - t
            seen += n
    model.eval()
    with torch.no_grad():
        xt, yt = test
        correct = sum(int((model(xt[i:i + 10000]).argmax(1) == yt[i:i + 10000]).sum())
                      for i in range(0, xt.shape[0], 10000))
    return {"examples_per_s": seen / elapsed, "loss": float(loss),
            "test_acc": correct / test[0].shape[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-sizes", default="256,1024,4096")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first is a warm-up)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run on a GPU host (or --device cpu)")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    train, test = on_device("train", args.device), on_device("test", args.device)
    print(f"torch {torch.__version__}, device {name}; LeNet-BN, Fashion-MNIST on the device, "
          f"SGD lr 1.0, {args.epochs - 1} timed epochs after 1 warm-up epoch")
    print("| batch | version | examples/s | final train loss | test acc |")
    print("|---|---|---|---|---|")
    versions = ["eager"] + ([] if args.no_compile else ["compiled"])
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for version in versions:
            r = run(args.device, batch, args.epochs, version == "compiled", train, test)
            print(f"| {batch} | {version} | {r['examples_per_s']:,.0f} | {r['loss']:.3f} "
                  f"| {r['test_acc']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
