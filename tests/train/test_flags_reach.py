"""Every new `bnlab train` flag reaches the layer, optimizer or loop it names: parsed by the
real parser, then read back from the objects the trainer builds from it and from the files a
real run of the command wrote."""

from __future__ import annotations

import json

import pytest
import torch

from bnlab.cli import build_parser, main
from bnlab.norm.base import tracked_batch_norms
from bnlab.train.build import lr_factor, make_model, make_optimizer
from bnlab.train.config import TrainConfig

BASE = ["--dataset", "fake-fashion-mnist", "--limit-train", "256", "--limit-test", "128",
        "--batch-size", "64", "--threads", "1", "--no-progress"]


def config_of(*flags: str) -> TrainConfig:
    from bnlab.cli import _check_combinations

    args = build_parser().parse_args(["train", "--out", "unused", *BASE, *flags])
    _check_combinations(args)
    return args.config


@pytest.mark.parametrize(("flag", "value", "momentum"),
                         [("--bn-momentum", "0.05", 0.05), ("--bn-momentum", "none", None)])
def test_bn_momentum_reaches_every_layer(flag, value, momentum):
    config = config_of(flag, value, "--bn-eps", "0.001")
    layers = tracked_batch_norms(make_model(config))
    assert len(layers) == 4
    assert all(m.momentum == momentum and m.eps == 0.001 for m in layers)


def test_optimizer_flags_reach_the_optimizer():
    config = config_of("--optimizer", "nesterov", "--momentum", "0.9", "--weight-decay",
                       "0.0005", "--no-decay-on-norm")
    opt = make_optimizer(config, make_model(config))
    assert type(opt) is torch.optim.SGD and opt.defaults["nesterov"] is True
    assert opt.defaults["momentum"] == 0.9
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0005, 0.0]
    adamw = config_of("--optimizer", "adamw", "--lr", "0.001")
    assert type(make_optimizer(adamw, make_model(adamw))) is torch.optim.AdamW


def test_schedule_flags_reach_the_learning_rate():
    config = config_of("--schedule", "step", "--warmup-epochs", "1", "--epochs", "4")
    assert config.schedule == "step" and config.warmup_epochs == 1
    assert lr_factor(config, 0, 10) == 0.1 and lr_factor(config, 35, 10) == pytest.approx(0.01)


def test_a_real_run_of_the_command_uses_every_new_flag(tmp_path):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), *BASE, "--epochs", "2", "--bn-momentum", "none",
                 "--bn-eps", "0.001", "--optimizer", "nesterov", "--momentum", "0.5",
                 "--weight-decay", "0.0001", "--no-decay-on-norm", "--schedule", "cosine",
                 "--warmup-epochs", "1", "--amp", "bf16", "--precise-bn", "128",
                 "--init", "gaussian-0.05", "--device", "cpu", "--lr", "0.5"]) == 0
    config = json.loads((out / "config.json").read_text())
    for key, value in (("bn_momentum", "cumulative"), ("bn_eps", 0.001), ("amp", "bf16"),
                       ("optimizer", "nesterov"), ("schedule", "cosine"), ("precise_bn", 128),
                       ("init", "gaussian-0.05"), ("device", "cpu"), ("warmup_epochs", 1)):
        assert config[key] == value, key
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [g["nesterov"] for g in groups] == [True, True]
    assert [g["weight_decay"] for g in groups] == [0.0001, 0.0]
    assert groups[0]["lr"] == pytest.approx(0.5 * 0.5 * (1 + torch.cos(torch.tensor(
        torch.pi * 3 / 4)).item()), rel=1e-6)  # cosine at step 7 of 4..8 after the warm-up
    # cumulative averages: after 8 batches of 64 the running mean is the plain mean of them
    assert int(state["model"]["1.num_batches_tracked"]) == 8
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("test_acc_precise" in r for r in rows)
