"""The synthetic stand-ins: offline, the same bytes everywhere, shaped like the real data, and
learnable above chance (a network that trains beats 1/10; one that cannot stays near it)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from bnlab.data import DATASETS, load_split
from bnlab.data.commands import data_check, data_fetch, data_info
from bnlab.errors import UserError
from bnlab.train import TrainConfig, train

DIGEST = ("import hashlib, sys; from bnlab.data import load_split; s = load_split(sys.argv[1], "
          "sys.argv[2]); print(hashlib.sha256(s.images.numpy().tobytes() + "
          "s.labels.numpy().tobytes()).hexdigest())")


@pytest.mark.parametrize(("name", "real"), [("fake-fashion-mnist", "fashion-mnist"),
                                            ("fake-cifar10", "cifar10")])
def test_shaped_like_the_real_dataset_and_balanced(name, real):
    spec, real_spec = DATASETS[name], DATASETS[real]
    assert "synthetic" in spec.title and spec.classes == real_spec.classes
    assert spec.image_shape == real_spec.image_shape
    for split in ("train", "test"):
        s = load_split(name, split)
        assert s.images.dtype == torch.uint8 and s.labels.dtype == torch.int64
        assert len(s) == spec.sizes[split]
        assert tuple(s.images.shape[1:]) == ((28, 28) if real_spec.channels == 1
                                             else (3, 32, 32))
        counts = torch.bincount(s.labels, minlength=10)
        assert int(counts.min()) == int(counts.max()) == len(s) // 10
        assert int(s.images.min()) >= 0 and int(s.images.max()) <= 255


def test_the_same_bytes_in_a_fresh_process():
    s = load_split("fake-fashion-mnist", "test")
    here = hashlib.sha256(s.images.numpy().tobytes() + s.labels.numpy().tobytes()).hexdigest()
    there = subprocess.run([sys.executable, "-c", DIGEST, "fake-fashion-mnist", "test"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert here == there
    train_digest = subprocess.run([sys.executable, "-c", DIGEST, "fake-fashion-mnist", "train"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    assert train_digest != there  # the splits are different examples


def test_the_data_commands_say_what_it_is():
    assert "generated in memory" in data_info("fake-cifar10")
    assert data_check("fake-cifar10", log=lambda m: None)
    assert "nothing to download" in data_fetch("fake-cifar10", log=lambda m: None)
    with pytest.raises(UserError, match="generated in memory"):
        load_split("fake-cifar10", "train", data_dir="/tmp")


def test_learnable_above_chance(tmp_path):
    config = TrainConfig(dataset="fake-fashion-mnist", model="lenet-bn", epochs=1,
                         limit_train=2048, limit_test=500, progress=False, threads=1,
                         batch_size=64)
    run = train(config, tmp_path / "bn", log=lambda m: None)
    assert run.final["test_acc"] > 0.5  # chance is 0.1
    flat = train(replace(config, lr=1e-9), tmp_path / "flat", log=lambda m: None)
    assert flat.final["test_acc"] < 0.3  # the weights as initialized: near chance
