"""Edges of training a user's network as given, each found by an independent hostile review:
lazy statistics, settings that must outlive the run, resuming with the same object, and
failures that must stay one line."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from bnlab.errors import UserError
from bnlab.train import TrainConfig, evaluate_run, train

TINY = TrainConfig(dataset="fake-fashion-mnist", epochs=1, batch_size=64, limit_train=64,
                   limit_test=64, progress=False, threads=1, lr=1e-12)


def quiet(msg: str) -> None:
    pass


def test_the_dry_batch_leaves_lazy_batchnorm_statistics_as_a_plain_layers(tmp_path):
    """One step: a lazy BatchNorm's running mean must be one momentum step from 0, exactly as
    the plain layer's (the dry batch's own batch is not counted)."""
    def net(bn: nn.Module) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(bn, nn.Flatten(), nn.Linear(784, 10))

    plain = train(TINY, tmp_path / "plain", model=net(nn.BatchNorm2d(1)), log=quiet)
    lazy = train(TINY, tmp_path / "lazy", model=net(nn.LazyBatchNorm2d()), log=quiet)
    for key in ("0.running_mean", "0.running_var", "0.num_batches_tracked"):
        assert torch.equal(plain.state_dict()[key], lazy.state_dict()[key]), key


def test_bn_eps_outlives_the_run(tmp_path):
    config = replace(TINY, model="lenet-bn", bn_eps=10.0, lr=0.3, limit_train=256)
    run = train(config, tmp_path / "r", log=quiet)
    assert all(m.eps == 10.0 for m in run.model().modules() if hasattr(m, "running_var"))
    assert evaluate_run(run.path).test_acc == run.final["test_acc"]


def test_resuming_with_the_same_lazy_object_is_the_same_network(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.LazyLinear(16), nn.LazyBatchNorm1d(), nn.ReLU(),
                        nn.LazyLinear(10))
    train(TINY, tmp_path / "r", model=net, log=quiet)  # materializes `net` (its state)
    run = train(replace(TINY, epochs=2), tmp_path / "r", model=net, resume=True, log=quiet)
    assert run.done and len(run.metrics) == 2


def test_a_sequential_networks_failure_names_the_inputs(tmp_path):
    x = torch.rand(64, 1, 28, 28, dtype=torch.float64)
    y = torch.arange(64) % 10
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(UserError, match=r"the inputs are float64 but the network's weights "
                                        r"are float32"):
        train(TINY, tmp_path / "r", model=net, train_data=(x, y), test_data=(x, y), log=quiet)
    narrow = torch.rand(64, 1, 20, 20)
    with pytest.raises(UserError, match=r"your network's forward raised RuntimeError: .* on "
                                        r"inputs of shape \(64, 1, 20, 20\)"):
        train(TINY, tmp_path / "r", model=net, train_data=(narrow, y),
              test_data=(narrow, y), log=quiet)
    assert not (tmp_path / "r").exists()


def test_test_labels_beyond_the_outputs_are_one_line(tmp_path):
    x = torch.rand(64, 1, 28, 28)
    y = torch.arange(64) % 10
    bad = y.clone()
    bad[40] = 10
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(UserError, match=r"label 10 in batch 1 of the test data is outside the "
                                        r"network's 10 outputs"):
        train(TINY, tmp_path / "r", model=net, train_data=TensorDataset(x, y),
              test_data=TensorDataset(x, bad), log=quiet)


def test_flags_for_bnlabs_datasets_refuse_user_data(tmp_path):
    x, y = torch.rand(64, 1, 28, 28), torch.arange(64) % 10
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    for change, flag in ((dict(augment=True), "augment"), (dict(data_dir="/tmp"), "data_dir")):
        with pytest.raises(UserError, match=f"{flag} applies to bnlab's own datasets"):
            train(replace(TINY, **change), tmp_path / "r", model=net, train_data=(x, y),
                  test_data=(x, y), log=quiet)
    with pytest.raises(UserError, match="--norm none builds no normalization layer"):
        train(replace(TINY, model="lenet-bn", norm="none", bn_eps=0.1), tmp_path / "r",
              log=quiet)
