"""State dicts load both ways between torch.nn.BatchNorm*d and bnlab.BatchNorm*d."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

import bnlab

PAIRS = [(nn.BatchNorm1d, bnlab.BatchNorm1d, (8, 4)),
         (nn.BatchNorm2d, bnlab.BatchNorm2d, (4, 4, 3, 3)),
         (nn.BatchNorm3d, bnlab.BatchNorm3d, (2, 4, 2, 3, 3))]


def train_a_little(m, shape):
    for i in range(3):
        m(torch.randn(shape) * (i + 1) + i)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    return m


@pytest.mark.parametrize("torch_cls,bnlab_cls,shape", PAIRS)
@pytest.mark.parametrize("direction", ["torch->bnlab", "bnlab->torch"])
def test_round_trip(torch_cls, bnlab_cls, shape, direction):
    src_cls, dst_cls = (torch_cls, bnlab_cls) if direction == "torch->bnlab" else (bnlab_cls,
                                                                                    torch_cls)
    src = train_a_little(src_cls(4), shape).eval()
    dst = dst_cls(4).eval()
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(shape)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=1e-6)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_torch_save_file_round_trip(tmp_path):
    ref = train_a_little(nn.BatchNorm2d(4), (4, 4, 3, 3))
    torch.save(ref.state_dict(), tmp_path / "bn.pt")
    ours = bnlab.BatchNorm2d(4)
    ours.load_state_dict(torch.load(tmp_path / "bn.pt", weights_only=True))
    assert int(ours.num_batches_tracked) == 3


def test_old_version_without_num_batches_tracked_loads():
    ref = train_a_little(nn.BatchNorm2d(4), (4, 4, 3, 3))
    sd = OrderedDict((k, v) for k, v in ref.state_dict().items() if k != "num_batches_tracked")
    sd._metadata = OrderedDict({"": {"version": 1}})  # what a pre-version-2 checkpoint holds
    ours = bnlab.BatchNorm2d(4)
    ours.load_state_dict(sd, strict=True)
    assert int(ours.num_batches_tracked) == 0
    torch.testing.assert_close(ours.running_mean, ref.running_mean)


def test_version_2_without_num_batches_tracked_is_missing_key():
    sd = nn.BatchNorm2d(4).state_dict()
    del sd["num_batches_tracked"]
    with pytest.raises(RuntimeError, match=r"Missing key.*num_batches_tracked"):
        bnlab.BatchNorm2d(4).load_state_dict(sd, strict=True)


def test_wrong_shape_is_refused():
    with pytest.raises(RuntimeError, match="size mismatch for running_mean"):
        bnlab.BatchNorm2d(4).load_state_dict(nn.BatchNorm2d(5).state_dict())


def test_keys_and_version_match_torch():
    for kw in ({}, {"affine": False}, {"track_running_stats": False}, {"bias": False}):
        ours, ref = bnlab.BatchNorm2d(4, **kw), nn.BatchNorm2d(4, **kw)
        assert list(ours.state_dict()) == list(ref.state_dict())
        assert ours.state_dict()._metadata[""]["version"] == 2
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
