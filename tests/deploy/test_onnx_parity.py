"""Every case of issue 25's item 2, exported by both of torch.onnx's exporters and run in
onnxruntime (CPU), against PyTorch's own output.

Oracle and tolerance: the PyTorch model in the same mode; float32 within 1e-5 relative to the
output's scale (both sides round each of a handful of ops once: ~1e-7 per op), float64 within
1e-12. Each exported file is also run at two other batch sizes (the batch is a dynamic
dimension) and must hold standard ONNX operators only (no custom domain, nothing of bnlab's).
"""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import bnlab
from bnlab.deploy import onnx_bytes, run_onnxruntime
from bnlab.models import build_model
from bnlab.norm.fused import fuse

EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]


def randomize(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters away from their identity defaults, so that a
    dropped or misplaced term shows."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) or hasattr(m, "running_mean"):
            with torch.no_grad():
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                if getattr(m, "weight", None) is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return model


def standard_only(data: bytes) -> list[str]:
    """The graph's op types, after checking that every node is in ONNX's default domain."""
    graph = onnx.load_from_string(data).graph
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}, {n.domain for n in graph.node}
    assert not any("bnlab" in n.op_type for n in graph.node)
    return sorted({n.op_type for n in graph.node})


def assert_parity(model: nn.Module, x: torch.Tensor, dynamo: bool, *, rtol: float = 1e-5,
                  batches: tuple[int, ...] = (1, 5)) -> list[str]:
    """Export `model` on `x`, run it in onnxruntime on `x` and on batches of other sizes."""
    data = onnx_bytes(model, x, dynamo=dynamo)
    ops = standard_only(data)
    for n in (x.shape[0], *batches):
        xb = x[:n] if n <= x.shape[0] else torch.randn(n, *x.shape[1:], dtype=x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last):
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            expected = model(xb)
        got = run_onnxruntime(data, xb)
        scale = expected.abs().max().item()
        torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * scale)
    return ops


class ResidualBlock(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN, plus the input, then ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), bnlab.BatchNorm2d(c),
                                  nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False),
                                  bnlab.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + x)


def _lenet() -> nn.Module:
    return build_model("lenet-bn", "bnlab")


CASES = {
    # the chapter's LeNet-BN (conv-BN-sigmoid-pool, linear-BN-sigmoid), as built and fused
    "lenet-bn": (_lenet, (3, 1, 28, 28)),
    "lenet-bn-fused": (lambda: fuse(_lenet()), (3, 1, 28, 28)),
    "resnet-block": (lambda: fuse(ResidualBlock(4)), (3, 4, 6, 6)),
    # every rank, BatchNorm first so that BatchNormalization itself is in the graph
    "bn1d-2d-input": (lambda: nn.Sequential(bnlab.BatchNorm1d(5), nn.Linear(5, 3)), (4, 5)),
    "bn1d-3d-input": (lambda: nn.Sequential(bnlab.BatchNorm1d(5)), (4, 5, 7)),
    "bn2d": (lambda: nn.Sequential(bnlab.BatchNorm2d(3)), (4, 3, 5, 6)),
    "bn3d": (lambda: nn.Sequential(bnlab.BatchNorm3d(3)), (4, 3, 4, 5, 3)),
    "affine-off": (lambda: nn.Sequential(bnlab.BatchNorm2d(3, affine=False)), (4, 3, 5, 6)),
}


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_eval_parity(case, dynamo):
    build, shape = CASES[case]
    model = randomize(build()).eval()
    ops = assert_parity(model, torch.randn(*shape), dynamo)
    if case.startswith(("bn", "affine")):
        assert "BatchNormalization" in ops  # ONNX's own operator, not a decomposition
    if case == "lenet-bn-fused":
        assert {"Sigmoid", "AveragePool"} <= set(ops)  # the fused layer, unfused in ONNX


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("rank", [4, 5])
def test_channels_last_inputs(rank, dynamo):
    layer = bnlab.BatchNorm2d(3) if rank == 4 else bnlab.BatchNorm3d(3)
    model = randomize(nn.Sequential(nn.Conv2d(3, 3, 1) if rank == 4 else nn.Conv3d(3, 3, 1),
                                    layer)).eval()
    fmt = torch.channels_last if rank == 4 else torch.channels_last_3d
    x = torch.randn(4, 3, *([5] * (rank - 2))).contiguous(memory_format=fmt)
    assert_parity(model, x, dynamo)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_float64_where_onnxruntime_runs_it(dynamo):
    model = randomize(nn.Sequential(bnlab.BatchNorm2d(3))).double().eval()
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64)
    assert_parity(model, x, dynamo, rtol=1e-12)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("fused", [False, True], ids=["bn", "fused"])
def test_training_mode_exports_batch_statistics_and_changes_nothing(fused, dynamo):
    """In training mode the graph normalizes with the batch's statistics (as the layer does);
    the running update is state, left out, and exporting does not move the model's buffers."""
    model = randomize(nn.Sequential(nn.Conv2d(2, 4, 3), bnlab.BatchNorm2d(4), nn.Sigmoid()))
    model = fuse(model) if fused else model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 2, 6, 6)
    data = onnx_bytes(model.train(), x, dynamo=dynamo)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for xb in (x, torch.randn(5, 2, 6, 6)):
        with torch.no_grad():
            expected = model(xb)  # batch statistics (this call updates the buffers, as usual)
        torch.testing.assert_close(run_onnxruntime(data, xb), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and it is not the eval-mode function
        assert (run_onnxruntime(data, x) - model.eval()(x)).abs().max() > 1e-2
