"""The textbook's teaching form is the same math as bnlab's, up to its two conventions."""

import pytest
import torch

import bnlab
import bnlab.functional as BF
from bnlab.norm.textbook import TextbookBatchNorm, textbook_batch_norm, textbook_momentum


@pytest.mark.parametrize("shape", [(16, 5), (4, 5, 6, 6)])
def test_same_output_same_mean_unbiased_variance(shape):
    x = torch.randn(shape, dtype=torch.float64) * 2 + 3
    c = shape[1]
    pshape = (1, c) if len(shape) == 2 else (1, c, 1, 1)
    gamma = torch.rand(pshape, dtype=torch.float64) + 0.5
    beta = torch.randn(pshape, dtype=torch.float64)
    mm, mv = torch.zeros(pshape, dtype=torch.float64), torch.ones(pshape, dtype=torch.float64)
    y_tb, mm_tb, mv_tb = textbook_batch_norm(x, gamma, beta, mm, mv, eps=1e-5, momentum=0.9)

    rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    y = BF.batch_norm(x, rm, rv, gamma.flatten(), beta.flatten(), training=True,
                      momentum=textbook_momentum(0.9), eps=1e-5)
    torch.testing.assert_close(y, y_tb, rtol=0, atol=1e-12)
    torch.testing.assert_close(rm, mm_tb.flatten(), rtol=0, atol=1e-14)
    # The textbook folds in the biased variance; bnlab the unbiased one (factor M / (M - 1)).
    m = x.numel() // c
    torch.testing.assert_close(rv - 0.9, (mv_tb.flatten() - 0.9) * m / (m - 1), rtol=0, atol=1e-13)

    y_tb_eval, _, _ = textbook_batch_norm(x, gamma, beta, rm.view(pshape), rv.view(pshape),
                                          eps=1e-5, momentum=0.9, training=False)
    y_eval = BF.batch_norm(x, rm, rv, gamma.flatten(), beta.flatten(), training=False)
    torch.testing.assert_close(y_eval, y_tb_eval, rtol=0, atol=1e-12)


def test_textbook_layer_trains_like_bnlab_layer():
    tb, ours = TextbookBatchNorm(3, num_dims=4).double(), bnlab.BatchNorm2d(3).double()
    for _ in range(3):
        x = torch.randn(4, 3, 5, 5, dtype=torch.float64) + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        torch.testing.assert_close(tb(xa), ours(xb), rtol=0, atol=1e-12)
        g = torch.randn_like(x)
        tb(xa).backward(g)
        ours(xb).backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(tb.moving_mean.flatten(), ours.running_mean, rtol=0, atol=1e-14)
    assert "moving_mean" in tb.state_dict()  # buffers, unlike the notebooks' plain attributes


def test_momentum_map_is_an_involution():
    assert textbook_momentum(0.9) == pytest.approx(0.1)
    assert textbook_momentum(textbook_momentum(0.25)) == pytest.approx(0.25)


def test_textbook_form_rejects_other_ranks():
    with pytest.raises(ValueError, match="any rank"):
        textbook_batch_norm(torch.randn(2, 3, 4), torch.ones(1), torch.zeros(1), torch.zeros(1),
                            torch.ones(1), 1e-5, 0.9)
