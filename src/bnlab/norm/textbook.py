"""The textbook's teaching form of batch normalization, kept readable and tested against bnlab.

The "Batch Normalization" chapter of *Dive into Deep Learning* writes BatchNorm as one function
that returns new moving statistics instead of updating buffers::

    Y, moving_mean, moving_var = batch_norm(X, gamma, beta, moving_mean, moving_var,
                                            eps=1e-5, momentum=0.9)

It is the same math as ``bnlab.functional.batch_norm`` (and ``torch.nn.functional.batch_norm``):
same batch statistics, same normalization, same backward. Two conventions differ:

==========================  ==================================  ===============================
quantity                    textbook                            bnlab / PyTorch
==========================  ==================================  ===============================
momentum                    weight of the OLD average: 0.9      weight of the NEW batch: 0.1
                            (``textbook = 1 - torch``)
moving / running variance   biased batch variance (divide by M) unbiased: var * M / (M - 1)
train vs eval               ``torch.is_grad_enabled()``         ``module.training``
==========================  ==================================  ===============================

So ``momentum=0.9`` in the notebooks is ``momentum=0.1`` here, and the moving means agree exactly;
the moving variances differ by the factor M / (M - 1) on each folded-in batch (M = values per
channel: 256 for a (256, 120) batch, 256 * 24 * 24 for the first LeNet convolution). The
notebooks decide train vs eval by whether autograd is on, which mislabels evaluation run with
gradients enabled; this version takes ``training`` explicitly, like one of the seed notebooks.
Convention helpers for other frameworks live with the variants, not here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TextbookBatchNorm", "textbook_batch_norm", "textbook_momentum"]


def textbook_momentum(torch_momentum: float) -> float:
    """The textbook's momentum for a PyTorch momentum (and back: the map is its own inverse)."""
    return 1.0 - torch_momentum


def textbook_batch_norm(
    X: Tensor,
    gamma: Tensor,
    beta: Tensor,
    moving_mean: Tensor,
    moving_var: Tensor,
    eps: float,
    momentum: float,
    training: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """The chapter's ``batch_norm``, autograd through plain tensor ops, for (N, C) or (N, C, H, W).

    Returns ``(Y, new_moving_mean, new_moving_var)``; nothing is updated in place.
    """
    if X.dim() not in (2, 4):
        raise ValueError(
            f"the textbook form handles fully connected (N, C) and convolutional (N, C, H, W) "
            f"inputs, got {X.dim()}D; bnlab.functional.batch_norm handles any rank"
        )
    if not training:
        # Prediction: the moving statistics stand in for the batch's.
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        if X.dim() == 2:
            mean = X.mean(dim=0)  # (N,C) -> (C,)
            var = ((X - mean) ** 2).mean(dim=0)  # (N,C) -> (C,)
        else:
            mean = X.mean(dim=(0, 2, 3), keepdim=True)  # (N,C,H,W) -> (1,C,1,1)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)  # -> (1,C,1,1)
        X_hat = (X - mean) / torch.sqrt(var + eps)
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean.detach()
        moving_var = momentum * moving_var + (1.0 - momentum) * var.detach()
    Y = gamma * X_hat + beta
    return Y, moving_mean, moving_var


class TextbookBatchNorm(nn.Module):
    """The chapter's ``BatchNorm(num_features, num_dims)`` layer, with its conventions.

    Differences from the notebooks, all fixes rather than changes of meaning: the moving
    statistics are registered buffers (so ``.to(device)`` and ``state_dict`` carry them) and
    train/eval follows ``self.training``.
    """

    moving_mean: Tensor  # buffers, declared for the type checker (nn.Module's __getattr__
    moving_var: Tensor   # would type them Tensor | Module)

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5,
                 momentum: float = 0.9) -> None:
        super().__init__()
        if num_dims not in (2, 4):
            raise ValueError(f"num_dims must be 2 (fully connected) or 4 (conv), got {num_dims}")
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))

    def forward(self, X: Tensor) -> Tensor:
        Y, moving_mean, moving_var = textbook_batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var,
            eps=self.eps, momentum=self.momentum, training=self.training,
        )
        self.moving_mean.copy_(moving_mean)
        self.moving_var.copy_(moving_var)
        return Y
