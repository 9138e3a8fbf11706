"""A user's network is trained as given: its weights, its module object, its Lazy layers.

Real runs on the synthetic Fashion-MNIST stand-in (offline, deterministic), a few hundred
examples each.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

import bnlab
from bnlab.norm.fused import BatchNormReLU
from bnlab.train import Run, TrainConfig, evaluate_run, train

TINY = TrainConfig(dataset="fake-fashion-mnist", epochs=1, batch_size=64, limit_train=256,
                   limit_test=128, progress=False, threads=1)


def quiet(msg: str) -> None:
    pass


def pretrained() -> nn.Sequential:
    """A network with BN + ReLU (which bnlab's copy fuses) and weights far from any init."""
    torch.manual_seed(7)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), bnlab.BatchNorm1d(32), nn.ReLU(),
                        nn.Linear(32, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0).add_(0.25)
    return net


def lazy_lenet_bn() -> nn.Sequential:
    """The chapter's LeNet-BN as its PyTorch code writes it: every layer lazy."""
    return nn.Sequential(
        nn.LazyConv2d(6, kernel_size=5), nn.LazyBatchNorm2d(), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.LazyConv2d(16, kernel_size=5), nn.LazyBatchNorm2d(), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.LazyLinear(120), nn.LazyBatchNorm1d(), nn.Sigmoid(),
        nn.LazyLinear(84), nn.LazyBatchNorm1d(), nn.Sigmoid(),
        nn.LazyLinear(10))


def test_pretrained_weights_survive_a_run_at_a_vanishing_learning_rate(tmp_path):
    net = pretrained()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    run = train(TrainConfig(**{**TINY.__dict__, "lr": 1e-12}), tmp_path / "r", model=net,
                log=quiet)
    trained = run.state_dict()
    for name, value in start.items():
        if "running" in name or "num_batches" in name:
            continue  # BatchNorm's statistics do move: they are not weights
        assert (trained[name].double() - value.double()).abs().max() <= 1e-9, name
        assert (net.state_dict()[name].double() - value.double()).abs().max() <= 1e-9, name
    assert run.config.init is None  # no initialization was applied to the user's network


def test_the_users_module_object_is_not_rewritten_but_ends_trained(tmp_path):
    net = pretrained()
    calls = []
    net[2].register_forward_hook(lambda m, i, o: calls.append(1))
    before_types = [type(m) for m in net.modules()]
    before_ids = [id(t) for t in (*net.parameters(), *net.buffers())]
    start = copy.deepcopy(net.state_dict())
    run = train(TINY, tmp_path / "r", model=net, log=quiet)
    assert [type(m) for m in net.modules()] == before_types  # not fused into BatchNormReLU
    assert not any(isinstance(m, BatchNormReLU) for m in net.modules())
    assert [id(t) for t in (*net.parameters(), *net.buffers())] == before_ids
    # the user's hook is part of the network: bnlab's copy keeps it (and so is not fused there)
    assert len(net[2]._forward_hooks) == 1 and len(calls) >= 4
    # ... and the trained state is the caller's, as train_ch6 leaves it
    for name, value in run.state_dict().items():
        assert torch.equal(net.state_dict()[name], value), name
    assert not torch.equal(net.state_dict()["1.weight"], start["1.weight"])
    # the run's model rebuilds the user's architecture, unfused, and converts back to torch
    rebuilt = run.model(pretrained)
    assert [type(m) for m in rebuilt.modules()] == before_types
    assert isinstance(bnlab.convert(rebuilt, to="torch")[2], nn.BatchNorm1d)


def test_the_chapters_lazy_lenet_bn_trains_as_an_object_and_loads_back(tmp_path):
    net = lazy_lenet_bn()
    run = train(TINY, tmp_path / "r", model=net, log=quiet)
    assert run.done
    assert run.config.model_info["state"]["0.weight"] == "lazy"
    assert net[0].weight.shape == (6, 1, 5, 5)  # the trained state materialized it
    assert torch.equal(net[9].weight, run.state_dict()["9.weight"])
    model = run.model(lazy_lenet_bn)  # a fresh lazy network takes the checkpoint's shapes
    x = torch.rand(4, 1, 28, 28)
    net.eval()
    assert torch.equal(model(x), net(x))


def test_the_chapters_lazy_lenet_bn_trains_from_the_command_line(tmp_path, monkeypatch):
    (tmp_path / "d2lnet.py").write_text(
        "from torch import nn\n\n"
        "def lenet_bn():\n"
        "    return nn.Sequential(\n"
        "        nn.LazyConv2d(6, kernel_size=5), nn.LazyBatchNorm2d(), nn.Sigmoid(),\n"
        "        nn.AvgPool2d(kernel_size=2, stride=2),\n"
        "        nn.LazyConv2d(16, kernel_size=5), nn.LazyBatchNorm2d(), nn.Sigmoid(),\n"
        "        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),\n"
        "        nn.LazyLinear(120), nn.LazyBatchNorm1d(), nn.Sigmoid(),\n"
        "        nn.LazyLinear(84), nn.LazyBatchNorm1d(), nn.Sigmoid(), nn.LazyLinear(10))\n")
    monkeypatch.chdir(tmp_path)
    from bnlab.cli import main

    assert main(["train", "--model", "d2lnet:lenet_bn", "--dataset", "fake-fashion-mnist",
                 "--epochs", "1", "--batch-size", "64", "--limit-train", "256",
                 "--limit-test", "128", "--no-progress", "--threads", "1",
                 "--out", str(tmp_path / "r")]) == 0
    sys.modules.pop("d2lnet", None)
    result = evaluate_run(tmp_path / "r", model="d2lnet:lenet_bn")
    assert result.test_acc == Run(tmp_path / "r").final["test_acc"]


def test_lazy_batchnorm_converts_both_ways_and_matches_torch():
    ours = bnlab.convert(nn.Sequential(nn.LazyBatchNorm2d(momentum=0.2)), to="bnlab")
    assert type(ours[0]) is bnlab.LazyBatchNorm2d and ours[0].momentum == 0.2
    theirs = bnlab.convert(ours, to="torch")
    assert type(theirs[0]) is nn.LazyBatchNorm2d and theirs[0].momentum == 0.2
    ours.double(), theirs.double()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-12)
    assert type(ours[0]) is bnlab.BatchNorm2d and type(theirs[0]) is nn.BatchNorm2d
    torch.testing.assert_close(ours[0].running_var, theirs[0].running_var, rtol=0, atol=1e-14)


def test_explicit_init_applies_to_a_users_network(tmp_path):
    net = pretrained()
    run = train(TrainConfig(**{**TINY.__dict__, "init": "gaussian-0.01", "lr": 1e-12}),
                tmp_path / "r", model=net, log=quiet)
    w = run.state_dict()["1.weight"]
    assert float(w.std()) < 0.02 and float(run.state_dict()["1.bias"].abs().max()) < 1e-9


def test_evaluate_reproduces_the_runs_own_figure_and_adds_precise_bn(tmp_path):
    run = train(TrainConfig(**{**TINY.__dict__, "model": "lenet-bn"}), tmp_path / "r",
                log=quiet)
    result = evaluate_run(run.path, precise_bn=256)
    assert result.test_acc == run.final["test_acc"] and result.examples == 128
    assert 0 <= result.test_acc_precise <= 1 and result.test_loss > 0
    with pytest.raises(bnlab.errors.UserError, match="--precise-bn 1"):
        evaluate_run(run.path, precise_bn=1)
