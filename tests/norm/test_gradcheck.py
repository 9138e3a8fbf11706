"""float64 gradcheck (and gradgradcheck) of the hand-derived backward, every mode and rank."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import bnlab.functional as BF
from bnlab.norm import backends

SHAPES = [(6, 3), (4, 3, 5), (3, 3, 4, 4), (2, 3, 2, 3, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}D")
@pytest.mark.parametrize("mode", ["train", "eval", "train-no-running"])
@pytest.mark.parametrize("affine", ["weight+bias", "weight-only", "none"])
@pytest.mark.parametrize("path", backends.BACKENDS)
def test_gradcheck(shape, mode, affine, path):
    """Every backend: the kernels' autograd node (C++; double backward through the reference's
    differentiable closed form), the reference's (a Python autograd.Function) and ATen's."""
    with backends.forced(path):
        _check_gradcheck(shape, mode, affine)


def _check_gradcheck(shape, mode, affine):
    c = shape[1]
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).requires_grad_()
    w = (torch.rand(c, dtype=torch.float64) + 0.5).requires_grad_() if affine != "none" else None
    b = torch.randn(c, dtype=torch.float64).requires_grad_() if affine == "weight+bias" else None
    rm, rv = torch.randn(c, dtype=torch.float64), torch.rand(c, dtype=torch.float64) + 0.5

    def f(x, w, b):
        # Fresh buffers on each call: gradcheck evaluates f many times.
        running = (None, None) if mode == "train-no-running" else (rm.clone(), rv.clone())
        return BF.batch_norm(x, *running, w, b, training=mode != "eval", momentum=0.1)

    inputs = (x, w, b)
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)
    assert gradgradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_channels_last():
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, w: BF.batch_norm(x, None, None, w, None, True), (x, w))


@pytest.mark.parametrize("path", ["kernels", "reference"])
def test_backward_is_the_closed_form_not_autograd_of_primitives(path):
    x = torch.randn(8, 3, requires_grad=True)
    with backends.forced(path):
        y = BF.batch_norm(x, None, None, training=True)
    # One node whose only successor is x's accumulator: no graph of primitive ops.
    expected = {"kernels": "CppNode<(anonymous namespace)::BatchNormNode>",
                "reference": "BatchNormFunctionBackward"}[path]
    assert expected in y.grad_fn.name()
    assert [type(f).__name__ for f, _ in y.grad_fn.next_functions] == ["AccumulateGrad"]
