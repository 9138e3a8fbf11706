r"""Batch normalization as pure functions, with a hand-derived backward.

The math, for one channel ``c``. The "batch" of that channel is every element that shares it:
for an input of shape (N, C, *spatial) that is M = N * prod(spatial) values x_1 .. x_M.

Forward::

    mu      = 1/M * sum_i x_i                    batch mean
    var     = 1/M * sum_i (x_i - mu)^2           biased batch variance: used to normalize
    inv_std = 1 / sqrt(var + eps)
    x_hat_i = (x_i - mu) * inv_std               zero mean, unit variance
    y_i     = gamma * x_hat_i + beta             learned scale and shift

The variance is computed in two passes (mean first, then the mean of squared deviations), never
as E[x^2] - E[x]^2, which cancels catastrophically when |mu| >> std.

Running statistics (PyTorch's convention; momentum m, default 0.1)::

    running_mean <- (1 - m) * running_mean + m * mu
    running_var  <- (1 - m) * running_var  + m * var * M / (M - 1)     unbiased variance

In evaluation mode mu and var are replaced by running_mean and running_var (constants).

Backward. Write g_i = dL/dy_i. The shift and scale are immediate::

    dL/dbeta  = sum_i g_i
    dL/dgamma = sum_i g_i * x_hat_i

For the input, x_hat_i depends on x_k directly and through mu and var. Using
d mu / d x_k = 1/M and d var / d x_k = 2/M * (x_k - mu) (the cross term
-2/M * sum_j (x_j - mu) vanishes because deviations sum to zero)::

    d x_hat_i / d x_k = inv_std * (delta_ik - 1/M) - (x_i - mu) * inv_std^3 * (x_k - mu) / M
                      = inv_std / M * (M * delta_ik - 1 - x_hat_i * x_hat_k)

so, with dL/dx_hat_i = gamma * g_i::

    dL/dx_k = gamma * inv_std / M * (M * g_k - sum_i g_i - x_hat_k * sum_i g_i * x_hat_i)

The two sums are exactly dL/dbeta and dL/dgamma: one reduction pass serves all three gradients.
In evaluation mode the statistics are constants and dL/dx_k = gamma * inv_std * g_k.

Half types (float16, bfloat16) are computed in float32 and rounded once to the input dtype,
like PyTorch's CPU and CUDA kernels.

Extreme values, as ATen. The mean of float32 (and half) values is accumulated in float64: the
float32 sum of values near 3e38 overflows where the mean does not. The variance stays in the
compute dtype: past its range it is inf, inv_std is 0 and y = beta, as ATen's float32 sum of
squared deviations gives. Where the scale gamma * inv_std is 0 or not finite (that case, or
eps = 0 with a zero variance), (x - mu) * scale can overflow or be 0 * inf = NaN where ATen's
``x * alpha + (beta - mu * alpha)`` is not; those channels are computed in ATen's form.

This module is the readable reference, and it imports nothing but torch: the other backends
(the compiled kernels of ``bnlab.norm.kernels``, ATen) plug in above it, chosen in one place
(``bnlab.norm.backends``), and the tests hold all of them to this one and to PyTorch. Its entry
point ``batch_norm`` takes arguments already checked by ``bnlab.norm.functional``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function

__all__ = ["BatchNormFunction", "backward_sums", "batch_norm", "batch_statistics",
           "blend_running_stats", "compute_dtype", "differentiable_backward", "input_grad",
           "normalize", "normalize_backward", "update_running_stats"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics of half types accumulate in float32; float32/float64 stay as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _reduce_dims(x: Tensor) -> tuple[int, ...]:
    """Every dim but the channel dim 1: (N, C, *spatial) reduces over (0, 2, 3, ...)."""
    return (0, *range(2, x.dim()))


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """View a (C,) vector so it broadcasts against x: (C,) -> (1, C, 1, ..., 1)."""
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def batch_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance, two-pass, in the compute dtype.

    Returns (mean, var), each of shape (C,).
    """
    xf = x.to(compute_dtype(x.dtype))
    dims = _reduce_dims(x)
    wide = torch.float64 if xf.dtype is torch.float32 else xf.dtype  # no overflow of the sum
    mean = xf.mean(dim=dims, dtype=wide).to(xf.dtype)  # (N,C,*) -> (C,)
    var = (xf - _per_channel(mean, x)).square().mean(dim=dims)  # (N,C,*) -> (C,)
    return mean, var


def blend_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    unbiased_var: Tensor,
    momentum: float,
    skipped: Tensor | None = None,
) -> bool:
    """running <- (1 - momentum) * running + momentum * batch, in place, for mean and variance.

    With a `skipped` counter (guarded statistics), new values that would not be finite in the
    buffers' dtype (a NaN/Inf in the batch, or a variance beyond float16's range in a float16
    buffer) are not stored: the counter is incremented instead. Returns whether the buffers
    were updated.
    """
    with torch.no_grad():
        # Blend in the compute dtype, then store once in the buffer's dtype.
        new_mean = ((1 - momentum) * running_mean.to(mean.dtype) + momentum * mean).to(
            running_mean.dtype)
        new_var = ((1 - momentum) * running_var.to(unbiased_var.dtype)
                   + momentum * unbiased_var).to(running_var.dtype)
        if skipped is not None and not bool(
            torch.isfinite(new_mean).all() & torch.isfinite(new_var).all()
        ):
            skipped.add_(1)
            return False
        running_mean.copy_(new_mean.reshape(running_mean.shape))
        running_var.copy_(new_var.reshape(running_var.shape))
        return True


def update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: int,
    momentum: float,
    skipped: Tensor | None = None,
) -> bool:
    """Fold one batch's (mean, biased var) over `count` values into the running buffers.

    The running variance stores the unbiased estimate var * count / (count - 1).
    """
    # (not var * (count / (count - 1)): under jit.trace the factor would be rounded to float32)
    unbiased = var * count / (count - 1)
    return blend_running_stats(running_mean, running_var, mean, unbiased, momentum, skipped)


def normalize(
    x: Tensor, mean: Tensor, inv_std: Tensor, weight: Tensor | None, bias: Tensor | None
) -> Tensor:
    """y = gamma * (x - mu) * inv_std + beta, computed in the compute dtype, returned in x's.

    A channel whose scale gamma * inv_std is 0 or not finite is computed in ATen's form
    x * scale + (beta - mu * scale) (see the module docstring).
    """
    xf = x.to(mean.dtype)
    scale = inv_std if weight is None else inv_std * weight.to(mean.dtype)  # (C,)
    shift = torch.zeros_like(scale) if bias is None else bias.to(mean.dtype).reshape(-1)
    degenerate = (scale == 0) | ~torch.isfinite(scale)  # (C,)
    center = torch.where(degenerate, torch.zeros_like(mean), mean)
    shift = torch.where(degenerate, shift - mean * scale, shift)
    y = (xf - _per_channel(center, x)) * _per_channel(scale, x) + _per_channel(shift, x)
    return y.to(x.dtype)


def backward_sums(
    grad_out: Tensor, x: Tensor, mean: Tensor, inv_std: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(g, x_hat, sum g, sum g * x_hat) in the compute dtype: the one reduction pass of backward.

    The two sums are dL/dbeta and dL/dgamma; they also feed dL/dx (see the module docstring).
    """
    dims = _reduce_dims(x)
    g = grad_out.to(mean.dtype)
    x_hat = (x.to(mean.dtype) - _per_channel(mean, x)) * _per_channel(inv_std, x)
    sum_g = g.sum(dim=dims)  # (N,C,*) -> (C,)
    sum_g_xhat = (g * x_hat).sum(dim=dims)  # (N,C,*) -> (C,)
    return g, x_hat, sum_g, sum_g_xhat


def input_grad(
    g: Tensor, x_hat: Tensor, inv_std: Tensor, weight: Tensor | None, sum_g: Tensor,
    sum_g_xhat: Tensor, count: int | None, out_dtype: torch.dtype,
) -> Tensor:
    """dL/dx = gamma * inv_std / M * (M g - sum g - x_hat sum g x_hat), M = `count`.

    With ``count=None`` the statistics were constants (eval mode): dL/dx = gamma * inv_std * g.
    """
    scale = inv_std if weight is None else inv_std * weight.to(inv_std.dtype)  # (C,)
    if count is not None:
        g = g - _per_channel(sum_g / count, g) - x_hat * _per_channel(sum_g_xhat / count, g)
    return (g * _per_channel(scale, g)).to(out_dtype)


def normalize_backward(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    inv_std: Tensor,
    batch_stats: bool,
    needs: tuple[bool, bool, bool],
    bias_dtype: torch.dtype,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Closed-form gradients (see the module docstring) for input, weight and bias."""
    g, x_hat, sum_g, sum_g_xhat = backward_sums(grad_out, x, mean, inv_std)
    grad_input = grad_weight = grad_bias = None
    if needs[0]:
        count = x.numel() // max(x.shape[1], 1) if batch_stats else None
        grad_input = input_grad(g, x_hat, inv_std, weight, sum_g, sum_g_xhat, count, x.dtype)
    if needs[1] and weight is not None:
        grad_weight = sum_g_xhat.to(weight.dtype)
    if needs[2]:
        grad_bias = sum_g.to(bias_dtype)
    return grad_input, grad_weight, grad_bias


def differentiable_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, inv_std: Tensor,
    batch_stats: bool, eps: float, needs: tuple[bool, bool, bool], bias_dtype: torch.dtype,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The closed-form backward built from differentiable ops: used under create_graph=True.

    The saved statistics carry no history, so with batch statistics they are recomputed from x;
    the closed form is then itself differentiable (double backward).
    """
    if batch_stats and x.numel() > 0:
        mean, var = batch_statistics(x)
        inv_std = torch.rsqrt(var + eps)
    return normalize_backward(grad_out, x, weight, mean, inv_std, batch_stats, needs,
                               bias_dtype)


class BatchNormFunction(Function):
    """Autograd node of the reference: forward normalizes, backward is closed-form. (The
    compiled kernels have their own node, in C++: see bnlab.norm.kernels.)

    Returns (y, mean, var): the output and the statistics it used (non-differentiable), so
    that the running update happens outside the node, after it. A node without side effects
    is what a tracer may record and replay (torch.jit.trace records the node *and* what runs
    inside it: an update inside would be replayed twice)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        batch_stats: bool,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        ctx.batch_stats = batch_stats
        ctx.eps = eps
        ctx.bias_dtype = bias.dtype if bias is not None else x.dtype
        cdtype = compute_dtype(x.dtype)
        if not batch_stats:
            assert running_mean is not None and running_var is not None  # checked by the caller
            mean, var = running_mean.to(cdtype), running_var.to(cdtype)
        elif x.numel() == 0:
            # An empty batch has no statistics: output is empty, running stats untouched.
            c = x.shape[1]
            mean = torch.zeros(c, dtype=cdtype, device=x.device)
            var = torch.ones(c, dtype=cdtype, device=x.device)
        else:
            mean, var = batch_statistics(x)
        inv_std = torch.rsqrt(var + eps)  # (C,)
        y = normalize(x, mean, inv_std, weight, bias)
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, inv_std = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        if torch.is_grad_enabled():  # create_graph=True
            gx, gw, gb = differentiable_backward(grad_out, x, weight, mean, inv_std,
                                                 ctx.batch_stats, ctx.eps, needs, ctx.bias_dtype)
        else:
            gx, gw, gb = normalize_backward(grad_out, x, weight, mean, inv_std, ctx.batch_stats,
                                             needs, ctx.bias_dtype)
        return gx, gw, gb, None, None, None, None


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    skipped: Tensor | None = None,
) -> Tensor:
    """The reference backend: ``torch.nn.functional.batch_norm``'s contract, arguments already
    checked (``bnlab.norm.functional.batch_norm`` is the checked public entry).

    ``skipped`` (guarded statistics): a scalar counter; when given, a batch with a non-finite
    mean or variance is not folded into the running buffers and the counter is incremented.
    """
    y, mean, var = BatchNormFunction.apply(input, weight, bias, running_mean, running_var,
                                           training, float(eps))
    # Last, once nothing can fail any more: fold the batch into the running buffers.
    if training and running_mean is not None and running_var is not None and input.numel() > 0:
        count = input.numel() // input.shape[1]
        update_running_stats(running_mean, running_var, mean, var, count, float(momentum),
                             skipped)
    return y
