"""Every run setting reaches the object it names: read back from the layers, optimizer and
learning rates a real run built and used."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

import bnlab
from bnlab.errors import RunDirError, UserError
from bnlab.norm.base import tracked_batch_norms
from bnlab.train import Run, TrainConfig, train
from bnlab.train.build import lr_factor, make_model, make_optimizer, weights_before_norm
from bnlab.train.epoch import Estimate

TINY = TrainConfig(dataset="fake-fashion-mnist", epochs=1, batch_size=64, limit_train=256,
                   limit_test=128, progress=False, threads=1)


def quiet(msg: str) -> None:
    pass


@pytest.mark.parametrize("norm", ["bnlab", "torch", "ghost", "renorm"])
def test_bn_momentum_and_eps_are_passed_to_every_layer_at_construction(norm):
    model = make_model(replace(TINY, model="lenet-bn", norm=norm, bn_momentum=0.03,
                               bn_eps=1e-3))
    layers = tracked_batch_norms(model)
    assert len(layers) == 4
    assert all(m.momentum == 0.03 and m.eps == 1e-3 for m in layers)
    cumulative = make_model(replace(TINY, model="lenet-bn", norm=norm,
                                    bn_momentum="cumulative"))
    assert all(m.momentum is None for m in tracked_batch_norms(cumulative))


def test_the_textbook_layer_gets_the_same_momentum_in_its_own_convention():
    model = make_model(replace(TINY, model="lenet-bn", norm="textbook", bn_momentum=0.03))
    from bnlab.norm.textbook import TextbookBatchNorm

    layers = [m for m in model.modules() if isinstance(m, TextbookBatchNorm)]
    assert len(layers) == 4 and all(math.isclose(m.momentum, 0.97) for m in layers)
    with pytest.raises(UserError, match="cumulative average"):
        make_model(replace(TINY, model="lenet-bn", norm="textbook", bn_momentum="cumulative"))


def test_momentum_on_a_norm_without_running_averages_is_an_error():
    with pytest.raises(UserError, match="do not apply to --norm group"):
        make_model(replace(TINY, model="lenet-bn", norm="group", bn_momentum=0.03))


def test_settings_reach_a_users_network_and_the_run_uses_them(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), bnlab.BatchNorm1d(16), nn.ReLU(),
                        nn.Linear(16, 10))
    run = train(replace(TINY, bn_momentum=1.0, bn_eps=0.5), tmp_path / "r", model=net,
                log=quiet)
    # the user's object gets the trained state and the settings it was trained with
    assert net[2].momentum == 1.0 and net[2].eps == 0.5
    # momentum 1: the running statistics are the last training batch's (unbiased) ones
    state = run.state_dict()
    assert int(state["2.num_batches_tracked"]) == 4
    rebuilt = make_model(replace(TINY, bn_momentum=1.0, bn_eps=0.5), net)
    assert rebuilt[2].momentum == 1.0 and rebuilt[2].eps == 0.5
    with pytest.raises(UserError, match="no BatchNorm layer"):
        make_model(replace(TINY, bn_momentum=0.5), nn.Sequential(nn.Linear(2, 2)))


def test_optimizers_and_weight_decay_without_the_norm_parameters():
    model = make_model(replace(TINY, model="lenet-bn"))
    norm_params = {id(p) for m in tracked_batch_norms(model) for p in m.parameters()}
    for name, cls in (("sgd", torch.optim.SGD), ("nesterov", torch.optim.SGD),
                      ("adamw", torch.optim.AdamW)):
        momentum = 0.0 if name == "adamw" else 0.9  # (SGD's momentum: refused with adamw)
        opt = make_optimizer(replace(TINY, optimizer=name, momentum=momentum,
                                     weight_decay=5e-4, no_decay_on_norm=True), model)
        assert type(opt) is cls
        assert opt.defaults.get("nesterov", False) == (name == "nesterov")
        decayed, free = opt.param_groups
        assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
        assert {id(p) for p in free["params"]} == norm_params
        assert not norm_params & {id(p) for p in decayed["params"]}
    plain = make_optimizer(replace(TINY, weight_decay=5e-4), model)
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["weight_decay"] == 5e-4


def test_schedules_by_formula():
    c = replace(TINY, epochs=4, warmup_epochs=1, schedule="cosine")
    steps = 10
    assert [lr_factor(c, t, steps) for t in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(c, 10, steps) == 1.0  # the cosine starts at its top after the warm-up
    assert math.isclose(lr_factor(c, 25, steps), 0.5, rel_tol=1e-12)  # halfway through 30
    s = replace(TINY, epochs=4, schedule="step")
    assert [lr_factor(s, e * steps, steps) for e in range(4)] == [1.0, 1.0, 0.1,
                                                                   pytest.approx(0.01)]
    assert lr_factor(TINY, 123, steps) == 1.0


def test_a_run_follows_its_schedule(tmp_path):
    config = replace(TINY, epochs=2, lr=0.4, schedule="cosine", warmup_epochs=1)
    run = train(config, tmp_path / "r", log=quiet)
    checkpoint = run.dir.load_checkpoint()
    last = checkpoint["optimizer"]["param_groups"][0]["lr"]
    steps = 4  # 256 examples in batches of 64
    assert last == pytest.approx(0.4 * lr_factor(config, 2 * steps - 1, steps), rel=1e-15)


def test_bf16_autocast_trains_on_the_cpu(tmp_path):
    run = train(replace(TINY, model="lenet-bn", amp="bf16"), tmp_path / "r", log=quiet)
    assert run.done and math.isfinite(run.final["train_loss"])
    assert run.state_dict()["0.weight"].dtype == torch.float32  # the weights stay float32
    with pytest.raises(UserError, match="--amp fp16 needs a CUDA device"):
        train(replace(TINY, model="lenet-bn", amp="fp16", device="cpu"), tmp_path / "fp16",
              log=quiet)


def test_a_device_that_is_not_there_is_one_clear_error(tmp_path):
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    name = f"cuda:{max(n, 1)}"  # one past the last device, wherever this runs
    why = "was asked for but no CUDA device" if n == 0 else f"has {n} CUDA device"
    with pytest.raises(UserError, match=f"--device {name}.*{why}"):
        train(replace(TINY, device=name), tmp_path / "r", log=quiet)
    assert not (tmp_path / "r").exists()


def test_a_finished_run_extends_to_the_same_numbers_as_a_longer_run(tmp_path):
    short = train(replace(TINY, model="lenet-bn"), tmp_path / "ext", log=quiet)
    assert short.done and len(short.metrics) == 1
    extended = train(replace(TINY, model="lenet-bn", epochs=2), tmp_path / "ext", resume=True,
                     log=quiet)
    straight = train(replace(TINY, model="lenet-bn", epochs=2), tmp_path / "straight",
                     log=quiet)
    keys = ("train_loss", "train_acc", "test_acc")
    assert [[m[k] for k in keys] for m in extended.metrics] == \
        [[m[k] for k in keys] for m in straight.metrics]
    assert extended.done and Run(tmp_path / "ext").config.epochs == 2
    assert torch.equal(extended.state_dict()["0.weight"], straight.state_dict()["0.weight"])


def test_a_cosine_run_cannot_be_extended(tmp_path):
    train(replace(TINY, model="lenet-bn", schedule="cosine"), tmp_path / "r", log=quiet)
    with pytest.raises(RunDirError, match="cosine schedule was laid over 1"):
        train(replace(TINY, model="lenet-bn", schedule="cosine", epochs=2), tmp_path / "r",
              resume=True, log=quiet)


def test_the_estimate_speaks_once_for_a_long_run_only():
    said: list[str] = []
    long = Estimate(said.append, epochs_left=10)
    long.step(0, 0.5, 1000)  # too early to tell
    long.step(4, 3.0, 1000)  # 0.6 s a step, 600 s an epoch
    long.step(5, 3.6, 1000)
    assert said == ["estimate: about 10 min an epoch on this machine (0.60 s a step, 1000 "
                    "steps); 10 epoch(s): about 1.7 h"]
    short: list[str] = []
    Estimate(short.append, epochs_left=1).step(4, 0.01, 10)
    assert short == []


def test_no_decay_before_norm_spares_exactly_the_weights_that_feed_a_norm():
    """LeNet-BN: every conv/linear but the last feeds a BatchNorm (the dataflow graph says
    which); their weights lose the decay, their biases and everything else keep it."""
    model = make_model(replace(TINY, model="lenet-bn"))
    found = weights_before_norm(model)
    linear = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert found == [f"{n}.weight" for n in linear[:-1]]  # the output layer feeds no norm
    opt = make_optimizer(replace(TINY, weight_decay=1e-3, no_decay_before_norm=True), model)
    decayed, free = opt.param_groups
    params = dict(model.named_parameters())
    assert {id(p) for p in free["params"]} == {id(params[n]) for n in found}
    assert free["weight_decay"] == 0.0 and decayed["weight_decay"] == 1e-3
    both = make_optimizer(replace(TINY, weight_decay=1e-3, no_decay_before_norm=True,
                                  no_decay_on_norm=True), model)
    norm = {id(p) for m in tracked_batch_norms(model) for p in m.parameters()}
    assert {id(p) for p in both.param_groups[1]["params"]} == norm | {id(params[n])
                                                                       for n in found}


def test_no_decay_before_norm_reads_the_dataflow_not_the_child_order():
    """A forward that skips the norm, or reads the conv's output twice, has no weight that
    the norm makes scale invariant; a forward that reorders children still has one."""

    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.bn, self.out = nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.fc(x)
            return self.out(h + self.bn(h))  # fc's output is also read beside the norm

    class Reordered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn, self.out, self.fc = nn.BatchNorm1d(4), nn.Linear(4, 2), nn.Linear(4, 4)

        def forward(self, x):
            return self.out(torch.relu(self.bn(self.fc(x))))

    assert weights_before_norm(Skips()) == []
    assert weights_before_norm(Reordered()) == ["fc.weight"]
    with pytest.raises(UserError, match="no conv or linear layer"):
        make_optimizer(replace(TINY, weight_decay=1e-3, no_decay_before_norm=True), Skips())
    with pytest.raises(ValueError, match=r"no_decay_before_norm=True with weight_decay=0\.0"):
        replace(TINY, no_decay_before_norm=True)


def test_no_decay_before_norm_refuses_a_network_fx_cannot_trace():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(self.fc(x)) if x.sum() > 0 else x  # data-dependent control flow

    with pytest.raises(UserError, match=r"torch\.fx cannot trace"):
        make_optimizer(replace(TINY, weight_decay=1e-3, no_decay_before_norm=True), Branchy())


def test_no_decay_before_norm_trains_a_user_network(tmp_path):
    """The flag on the user's network: the run names the spared weights and its checkpoint's
    optimizer has the second group without decay; the user's object is not rewritten."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.ReLU(),
                        nn.Linear(16, 10))
    lines: list[str] = []
    config = replace(TINY, model="custom", weight_decay=1e-3, no_decay_before_norm=True)
    run = train(config, tmp_path / "r", log=lines.append, model=net)
    assert any("before a norm layer: 1.weight" in line for line in lines), lines
    groups = run.dir.load_checkpoint()["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0]
    assert type(net[1]) is nn.Linear and type(net[2]) is nn.BatchNorm1d
