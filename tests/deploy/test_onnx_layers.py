"""Which layers export and which refuse, in one line naming the layer; a graph traced before
export (holding bnlab::batch_norm); the Python twin's file handling.

Oracle: the PyTorch layer itself in the same mode, run next to onnxruntime (float32 within
1e-5 relative to the output's scale).
"""

from __future__ import annotations

import io

import onnx
import pytest
import torch
from torch import nn

import bnlab.errors
from bnlab.deploy import export_onnx, run_onnxruntime
from bnlab.norm import kernels
from bnlab.norm.fused import fuse
from bnlab.norm.registry import create_norm

from .test_onnx_parity import EXPORTERS, assert_parity, randomize

VARIANTS = ["ghost", "renorm", "noisy-bn", "frozen", "group", "layer", "instance", "guarded",
            "sync", "running-stats", "batch-stats-detached", "per-activation", "textbook"]


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_exports_in_eval_mode(name):
    """In eval mode every variant is a fixed per-channel (or per-sample) normalization."""
    layer = create_norm(name, 4, 4, (6, 6))
    model = randomize(nn.Sequential(nn.Conv2d(2, 4, 1), layer)).eval()
    assert_parity(model, torch.randn(3, 2, 6, 6), dynamo=False)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_variants_export_with_the_dynamo_exporter_too(dynamo):
    model = nn.Sequential(nn.Conv2d(2, 4, 1), create_norm("renorm", 4),
                          create_norm("ghost", 4), create_norm("noisy-bn", 4),
                          create_norm("group", 4), create_norm("guarded", 4))
    assert_parity(randomize(model).eval(), torch.randn(3, 2, 6, 6), dynamo)


@pytest.mark.parametrize("name,reason", [("noisy-bn", "random noise"),
                                         ("ghost", "ghost batch"),
                                         ("renorm", "r and d"),
                                         ("running-stats", "state")])
def test_variant_in_training_mode_is_refused_in_one_line_naming_it(name, reason, tmp_path):
    model = nn.Sequential(nn.Conv2d(2, 4, 1), create_norm(name, 4)).train()
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")
    with pytest.raises(RuntimeError) as e:
        export_onnx(model, target, example=torch.randn(3, 2, 6, 6))
    message = str(e.value)
    assert "\n" not in message and "layer '1' (" in message and reason in message
    assert message.endswith("call model.eval() before exporting")
    assert target.read_bytes() == b"the previous export"  # nothing half-written
    # the plain exporter refuses too (the layer checks itself while it is traced)
    with pytest.raises(RuntimeError, match="cannot be exported to ONNX in training mode"):
        torch.onnx.export(model, (torch.randn(3, 2, 6, 6),), io.BytesIO(), dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE)


def test_a_graph_traced_before_export_holds_the_operator_and_exports():
    """torch.jit.trace of a model on the compiled kernels records bnlab::batch_norm; the
    registered symbolic turns it into BatchNormalization, Sigmoid and AveragePool."""
    assert kernels.available(), kernels.status()
    model = randomize(fuse(_lenet())).eval()
    x = torch.randn(3, 1, 28, 28)
    traced = torch.jit.trace(model, (x,))
    assert "bnlab::batch_norm" in str(traced.inlined_graph)
    buffer = io.BytesIO()
    torch.onnx.export(traced, (x,), buffer, dynamo=False, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    ops = {n.op_type for n in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert {"BatchNormalization", "Sigmoid", "AveragePool"} <= ops
    for xb in (x, torch.randn(6, 1, 28, 28)):
        with torch.no_grad():
            expected = model(xb)
        torch.testing.assert_close(run_onnxruntime(buffer.getvalue(), xb), expected,
                                   rtol=1e-5, atol=1e-5)


def _lenet() -> nn.Module:
    from bnlab.models import build_model

    return build_model("lenet-bn", "bnlab")


def test_export_onnx_copies_the_model_writes_a_checked_file_and_reports(tmp_path):
    model = randomize(_lenet()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 28, 28)
    report = export_onnx(model, tmp_path / "lenet.onnx", example=x, dynamo=False, fold=True,
                         precise_bn=8, batches=[torch.randn(4, 1, 28, 28)] * 2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert report.folded == 4 and report.precise_samples == 8 and report.batch == 4
    assert report.max_rel_diff <= 1e-5 and "largest difference" in report.summary()
    assert "BatchNormalization" not in report.operators  # folded into Conv and Gemm
    assert [p.name for p in tmp_path.iterdir()] == ["lenet.onnx"]  # no temporary left
    data = (tmp_path / "lenet.onnx").read_bytes()
    assert run_onnxruntime(data, x).shape == (4, 10)


def test_export_onnx_refuses_a_missing_directory_and_bad_arguments(tmp_path):
    model = _lenet().eval()
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(bnlab.errors.UserError, match="no directory"):
        export_onnx(model, tmp_path / "nowhere" / "m.onnx", example=x)
    with pytest.raises(TypeError, match="example="):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="batches="):
        export_onnx(model, tmp_path / "m.onnx", example=x, precise_bn=8)
    assert list(tmp_path.iterdir()) == []
