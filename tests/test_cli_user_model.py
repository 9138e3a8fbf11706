"""`bnlab train/study --model package.module:factory`: a user's ResNet from their own file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnlab.cli import main

# A user's file: a ResNet-style network (stem, one residual block, global pooling), small
# enough to train on 256 Fashion-MNIST images in a second or two.
RESNET = '''
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return (self.bn2(self.conv2(self.bn1(self.conv1(x)).relu())) + x).relu()


class TinyResNet(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, stride=4, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.layer = Block(width)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x):
        return self.head(self.layer(self.stem(x)))


def make():
    return TinyResNet()


def make_wide():
    return TinyResNet(16)


def not_a_network():
    return "resnet"


NUMBER = 3


def data():
    import torch

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 28, 28, generator=g), torch.randint(0, 10, (96,), generator=g)
    return (x[:64], y[:64]), (x[64:], y[64:])


def not_data():
    return 3
'''
SMALL = ["--dataset", "fashion-mnist", "--epochs", "1", "--limit-train", "256",
         "--limit-test", "128", "--batch-size", "64", "--lr", "0.1", "--no-progress"]


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """The user's directory, holding mymod.py, on the import path (as PYTHONPATH would)."""
    (tmp_path / "mymod.py").write_text(RESNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("mymod", None)


def test_train_a_user_resnet_from_pythonpath_then_refuse_another_on_resume(user_dir, capsys):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(user_dir), str(Path(__file__).resolve().parents[1] / "src"),
         os.environ.get("PYTHONPATH", "")])}
    out = user_dir / "run"
    r = subprocess.run([sys.executable, "-m", "bnlab", "train", "--model", "mymod:make",
                        *SMALL, "--threads", "2", "--out", str(out)],
                       capture_output=True, text=True, env=env, cwd="/", timeout=300)
    assert r.returncode == 0, r.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "mymod:make" and config["norm"] == "own"
    info = config["model_info"]
    assert info["factory"] == "mymod:make" and info["class"] == "mymod.TinyResNet"
    assert info["state"]["layer.bn2.running_var"] == [8]
    assert (out / "DONE").exists() and len((out / "metrics.jsonl").read_text().splitlines()) == 1

    code = main(["train", "--model", "mymod:make_wide", *SMALL, "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "cannot resume" in err and "model: 'mymod:make' != 'mymod:make_wide'" in err
    assert main(["train", "--model", "mymod:make", *SMALL, "--out", str(out), "--resume"]) == 0
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize("model, needle", [
    ("nosuchmod:make", "module 'nosuchmod' was not found"),
    ("mymod:missing", "module 'mymod' has no attribute 'missing'"),
    ("mymod:not_a_network", "returned an object of type str, not a torch nn.Module"),
    ("mymod:NUMBER", "'NUMBER' is not callable"),
])
def test_a_bad_model_is_one_line_and_exit_1(user_dir, capsys, model, needle):
    code = main(["train", "--model", model, *SMALL, "--out", str(user_dir / "r")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("bnlab: error: ") and err.count("\n") == 1
    assert needle in err
    assert not (user_dir / "r").exists()


def test_a_model_that_is_no_import_path_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "resnet", "--out", "x"])
    assert e.value.code == 2
    assert "--model: invalid value 'resnet': choose one of cnn, " in capsys.readouterr().err


def test_study_on_a_user_resnet_lists_the_arms_that_do_not_apply(user_dir, capsys):
    out = user_dir / "study"
    assert main(["study", "batch-size", "--quick", "--model", "mymod:make", "--dataset",
                 "fashion-mnist", "--threads", "2", "--out", str(out)]) == 0
    rows = (out / "table.md").read_text().splitlines()[2:]
    ran = [r for r in rows if r.endswith("| ran |")]
    assert [r.split(" | ")[0] for r in ran] == ["| BN, batch 4, equal epochs", "| BN, batch 64",
                                                "| BN, batch 4, equal steps"]
    # 4 other layers x 3 arms, and Ghost BN
    assert sum("n/a: varies the normalization layer, and mymod:make takes no `norm`" in r
               for r in rows) == 13
    verdict = (out / "verdict").read_text()
    assert "Not run on mymod:make: Batch Renorm, batch 4, equal epochs; Batch Renorm, " \
        "batch 64;" in verdict
    config = json.loads((out / "runs" / "bnlab-b4-epochs-s0" / "config.json").read_text())
    assert config["model"] == "mymod:make" and config["batch_size"] == 4
    study = json.loads((out / "study.json").read_text())
    assert study["subject"] == {"model": "mymod:make", "dataset": "fashion-mnist",
                                "model_arg": "mymod:make", "dataset_arg": "fashion-mnist",
                                "takes_norm": False}
    assert study["ran"]["on"] == "mymod:make on fashion-mnist" and study["ran"]["seeds"] == 1
    assert verdict.startswith("[quick mode: a small subset, not evidence] [ran on mymod:make "
                              "on fashion-mnist] ")

    code = main(["study", "chapter", "--quick", "--model", "mymod:make", "--out",
                 str(user_dir / "chapter")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "none of its arms applies to mymod:make (it compares the chapter's networks" in err


def test_user_data_from_the_command_line(user_dir, capsys):
    out = user_dir / "run"
    argv = ["train", "--model", "mymod:make", "--epochs", "1", "--batch-size", "16",
            "--no-progress", "--out", str(out)]
    assert main([*argv, "--dataset", "mymod:data"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "mymod:data" and config["data_info"]["factory"] == "mymod:data"
    assert config["data_info"]["train"]["size"] == 64
    assert config["data_info"]["test"]["example_shape"] == [1, 28, 28]
    capsys.readouterr()
    assert main([*argv, "--dataset", "mymod:not_data", "--out", str(user_dir / "r")]) == 1
    err = capsys.readouterr().err
    assert "--dataset mymod:not_data: returned an object of type int, not a pair" in err
