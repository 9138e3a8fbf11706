"""The textbook's recipe, kept faithful as the baseline of bench_train.py.

As the seed notebooks run it: a per-sample dataset (ToTensor: x / 255) read by a DataLoader with
4 worker processes, the notebook's scratch ``batch_norm`` (train/eval decided by
``torch.is_grad_enabled()``, momentum 0.9 on the old average, moving statistics as plain
attributes), LeNet-BN with sigmoid and average pooling, Xavier-uniform init, plain SGD, and the
``train_ch6`` loop: running loss/accuracy sums per batch, test accuracy after every epoch.
Only the dataset source differs: torchvision is unusable here, so the same IDX files are read
through bnlab.data and served one sample at a time, as torchvision's FashionMNIST would.

    python benchmarks/textbook_recipe.py --epochs 10 --seed 0     (prints one JSON line)
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bnlab.data import load_split


def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    if not torch.is_grad_enabled():
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(X.shape) in (2, 4)
        if len(X.shape) == 2:
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        X_hat = (X - mean) / torch.sqrt(var + eps)
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
        moving_var = momentum * moving_var + (1.0 - momentum) * var
    Y = gamma * X_hat + beta
    return Y, moving_mean.data, moving_var.data


class BatchNorm(nn.Module):
    def __init__(self, num_features, num_dims):
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.moving_mean = torch.zeros(shape)
        self.moving_var = torch.ones(shape)

    def forward(self, X):
        if self.moving_mean.device != X.device:
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        Y, self.moving_mean, self.moving_var = batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var, eps=1e-5, momentum=0.9)
        return Y


def lenet_bn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), BatchNorm(6, num_dims=4), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), BatchNorm(16, num_dims=4), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), BatchNorm(120, num_dims=2), nn.Sigmoid(),
        nn.Linear(120, 84), BatchNorm(84, num_dims=2), nn.Sigmoid(),
        nn.Linear(84, 10))


class PerSample(Dataset):
    def __init__(self, split: str) -> None:
        s = load_split("fashion-mnist", split, log=lambda m: None)
        self.images, self.labels = s.images, s.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i].unsqueeze(0).float() / 255, int(self.labels[i])


def evaluate_accuracy(net, data_iter) -> float:
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for X, y in data_iter:
            correct += int((net(X).argmax(dim=1) == y).sum())
            total += y.numel()
    return correct / total


def train_ch6(epochs: int, lr: float, batch_size: int, seed: int) -> dict:
    torch.manual_seed(seed)
    net = lenet_bn()
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
    train_iter = DataLoader(PerSample("train"), batch_size, shuffle=True, num_workers=4)
    test_iter = DataLoader(PerSample("test"), batch_size, shuffle=False, num_workers=4)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        l_sum = acc_sum = n = 0.0
        for X, y in train_iter:
            optimizer.zero_grad()
            y_hat = net(X)
            lo = loss(y_hat, y)
            lo.backward()
            optimizer.step()
            with torch.no_grad():
                l_sum += float(lo) * X.shape[0]
                acc_sum += int((y_hat.argmax(dim=1) == y).sum())
                n += X.shape[0]
        test_acc = evaluate_accuracy(net, test_iter)
    wall = time.perf_counter() - start
    return {"recipe": "textbook", "seed": seed, "wall_s": wall, "train_loss": l_sum / n,
            "train_acc": acc_sum / n, "test_acc": test_acc,
            "examples_per_sec": epochs * n / wall}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory", choices=("system", "reuse"), default="system",
                    help="system: as the textbook's code runs (the default); reuse: the control "
                         "arm of bench_train.py, with the allocator policy bnlab's command sets")
    a = ap.parse_args()
    if a.memory == "reuse":
        from bnlab import memory

        memory.set_policy("reuse")  # (the DataLoader's workers inherit it: fork)
    result = train_ch6(a.epochs, a.lr, 256, a.seed)
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({**result, "peak_rss_mb": peak / 1024}))
