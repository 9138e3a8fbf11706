"""Probes do not change training; the teaching layer normalizes with its running averages."""

from dataclasses import replace

import torch
import torch.nn.functional as F

from bnlab.norm.variants.teaching import RunningStatsBatchNorm
from bnlab.studies.probes.ics import UnitInputProbe
from bnlab.studies.probes.landscape import LandscapeProbe
from bnlab.train import TrainConfig, train

CFG = TrainConfig(model="lenet-bn", epochs=1, limit_train=1024, limit_test=500, batch_size=128,
                  threads=2, progress=False, lr=0.3)
TIMING = ("examples_per_sec", "epoch_time", "wall_time")


def numbers(run):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in run.metrics]


def test_probed_runs_train_exactly_like_unprobed(tmp_path):
    plain = train(CFG, tmp_path / "plain", log=lambda m: None)
    land = train(CFG, tmp_path / "land", log=lambda m: None, probe=LandscapeProbe(2, CFG.lr))
    assert numbers(land) == numbers(plain)
    assert len(land.probes) == 4 and {"loss_range", "beta", "grad_change"} <= set(land.probes[0])
    cfg = replace(CFG, model="mlp3", batch_size=60, fuse=False)  # the probe hooks nn.Sigmoid
    plain = train(cfg, tmp_path / "plain3", log=lambda m: None)
    ics = train(cfg, tmp_path / "ics", log=lambda m: None, probe=UnitInputProbe(5, 200))
    assert numbers(ics) == numbers(plain)
    p = ics.probes[-1]
    assert p["p15"] <= p["p50"] <= p["p85"] and 0 <= p["test_acc"] <= 1
    assert ics.probes[0]["drift"] is None and p["drift"] > 0 and p["noise"] > 0
    # noisy BN draws its noise from the global RNG: the probe's forwards must give it back
    noisy = replace(cfg, norm="noisy-bn")
    plain = train(noisy, tmp_path / "plain-noisy", log=lambda m: None)
    probed = train(noisy, tmp_path / "noisy", log=lambda m: None, probe=UnitInputProbe(5, 200))
    assert numbers(probed) == numbers(plain)
    state = torch.load(tmp_path / "ics" / "checkpoint.pt", weights_only=True)
    assert state["probes"] == ics.probes  # kept in the checkpoint, so a resume keeps them


def test_running_stats_layer_normalizes_with_its_updated_buffers():
    bn = RunningStatsBatchNorm(3, momentum=0.5).double()
    x = torch.randn(16, 3, 4, dtype=torch.float64) * 2 + 5
    y = bn(x)
    expected = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(bn.running_mean, 0.5 * x.mean(dim=(0, 2)), rtol=0, atol=1e-12)
    xg = x.clone().requires_grad_()
    bn(xg).sum().backward()
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(1, 3, 1)
    torch.testing.assert_close(xg.grad, scale.expand_as(x), rtol=0, atol=1e-12)  # no stats path
