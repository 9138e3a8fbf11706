"""The functional entry point: ``batch_norm`` with the contract of ``F.batch_norm``.

It checks every argument (``bnlab.norm.checks``: before anything is computed, so an error never
leaves a running buffer half-updated) and hands the call to the backend that the one rule of
``bnlab.norm.backends`` picks: the readable reference (``bnlab.norm.reference``, where the math
and its derivation live), the compiled CPU kernels, or ATen.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab.norm import backends
from bnlab.norm.checks import check_batch_norm_args, traced_with_constant_shapes
from bnlab.norm.reference import batch_statistics, blend_running_stats, update_running_stats

__all__ = ["batch_norm", "batch_statistics", "blend_running_stats", "update_running_stats"]


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
    """Batch normalization with the exact contract of ``torch.nn.functional.batch_norm``.

    Args:
        input: (N, C, *) tensor, any rank >= 2, any memory format, floating point.
        running_mean, running_var: (C,) buffers, updated in place when ``training``; may be
            None when ``training`` (batch statistics only).
        weight, bias: optional (C,) affine parameters gamma and beta.
        training: normalize with batch statistics (and update the running buffers) if True,
            else with the running buffers.
        momentum: weight of the new batch in the running average (PyTorch convention: 0.1;
            the textbook's ``momentum=0.9`` is ``1 - momentum``).
        eps: added to the variance before the square root.
        skipped: bnlab extension (guarded statistics): a scalar counter; when given, a batch
            with a non-finite mean or variance is not folded into the running buffers and the
            counter is incremented instead, so one bad batch cannot poison them.

    Every argument is checked before anything is computed, so an error never leaves a running
    buffer half-updated.
    """
    if torch.jit.is_tracing():
        traced_with_constant_shapes(check_batch_norm_args, input, running_mean, running_var,
                                    weight, bias, training, momentum, eps)
    else:
        check_batch_norm_args(input, running_mean, running_var, weight, bias, training, momentum,
                              eps)
    return backends.batch_norm(input, running_mean, running_var, weight, bias, training,
                               float(momentum), float(eps), skipped)
