r"""Fold each BatchNorm into the convolution or linear layer before it, for inference.

In eval mode BatchNorm is the per-channel affine map y = a * z + b with
a = gamma / sqrt(running_var + eps) and b = beta - a * running_mean. After z = W x + c::

    y = (a * W) x + (a * c + b)

so the pair becomes one layer with weight a * W (scaled per output channel) and bias a * c + b.
``fold`` does this for every Conv1d/2d/3d or Linear directly followed by a BatchNorm (bnlab's,
torch's or frozen) inside an ``nn.Sequential``, replacing the BatchNorm with ``nn.Identity``.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from bnlab.norm.base import is_batch_norm

__all__ = ["fold", "fold_pair"]

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def fold_pair(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of `layer` computing bn(layer(x)) with bn's eval-mode transform."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold {type(bn).__name__} without running statistics "
                         f"(track_running_stats=False normalizes with batch statistics)")
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if bn.running_mean.dim() != 1 or bn.running_mean.numel() != channels:
        raise ValueError(f"cannot fold {type(bn).__name__}: its statistics are not one per "
                         f"output channel of the {type(layer).__name__} before it")
    out = copy.deepcopy(layer)
    with torch.no_grad():
        var, mean = bn.running_var.double(), bn.running_mean.double()
        a = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            a = a * bn.weight.double()
        b = -a * mean
        if bn.bias is not None:
            b = b + bn.bias.double()
        w = out.weight.double()
        out.weight.copy_((w * a.view(-1, *([1] * (w.dim() - 1)))).to(out.weight.dtype))
        c = out.bias.double() if out.bias is not None else torch.zeros_like(a)
        new_bias = (a * c + b).to(out.weight.dtype)
        if out.bias is None:
            out.bias = nn.Parameter(new_bias)
        else:
            out.bias.copy_(new_bias)
    return out


def fold(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return `model` (eval mode required) with every (conv|linear, BatchNorm) pair folded."""
    if model.training or any(m.training for m in model.modules() if is_batch_norm(m)):
        raise RuntimeError("fold needs eval mode: folding bakes the running statistics into the "
                           "weights, which is only the same function in eval; call "
                           "model.eval() first")
    model = model if inplace else copy.deepcopy(model)
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        for prev, cur in itertools.pairwise(list(parent._modules)):
            layer, bn = parent._modules[prev], parent._modules[cur]
            # A fused BatchNorm (bnlab.norm.fused) carries its sigmoid: not foldable.
            if (isinstance(layer, FOLDABLE) and bn is not None and is_batch_norm(bn)
                    and not hasattr(bn, "pool")):
                parent._modules[prev] = fold_pair(layer, bn)
                parent._modules[cur] = nn.Identity()
    return model
