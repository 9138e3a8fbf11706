"""all_or_nothing(model): what the tools rely on, tested on the mechanism itself."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import bnlab
from bnlab.norm.transaction import Snapshot, all_or_nothing
from tests.reliability.hostile import image, warm


def model() -> nn.Sequential:
    return warm(nn.Sequential(nn.Linear(3, 3), bnlab.BatchNorm1d(3), nn.BatchNorm1d(3)), 3, 2)


class Boom(Exception):
    pass


def test_every_kind_of_change_is_undone_into_the_same_objects():
    m = model()
    before, params = image(m), list(m.parameters())
    with pytest.raises(Boom), all_or_nothing(m):
        m[1].running_mean.add_(1)  # in place
        m[0].weight.data = torch.zeros(2, 2)  # rebound to another shape
        m[1].weight.requires_grad_(False)
        m[2].momentum = 0.9
        m[2] = nn.Identity()  # the tree
        m.append(nn.ReLU())
        m.eval()
        parametrize.register_parametrization(m[0], "weight", nn.Identity())  # class swap
        raise Boom
    assert image(m) == before
    assert all(a is b for a, b in zip(m.parameters(), params, strict=True))
    assert type(m[0]) is nn.Linear


def test_keyboard_interrupt_restores_too_and_a_snapshot_restores_twice():
    m = model()
    before = image(m)
    with pytest.raises(KeyboardInterrupt), all_or_nothing(m) as snap:
        m[1].running_var.mul_(3)
        snap.restore()
        m[1].running_var.mul_(5)
        raise KeyboardInterrupt
    assert image(m) == before


def test_inference_tensors_are_restored_inside_inference_mode():
    with torch.inference_mode():
        bn = bnlab.BatchNorm1d(3)
    snap = Snapshot(bn)
    with torch.inference_mode():
        bn.running_mean.add_(1)  # what torch does before refusing the write outside
    snap.restore()
    assert torch.equal(bn.running_mean, torch.zeros(3))


def test_success_keeps_the_changes():
    m = model()
    with all_or_nothing(m):
        m[1].running_mean.fill_(7)
    assert torch.equal(m[1].running_mean, torch.full((3,), 7.0))
