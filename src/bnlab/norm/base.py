"""Shared state of every bnlab normalization layer: parameters, buffers, reset, repr, versions.

Names and meanings follow ``torch.nn.modules.batchnorm._NormBase`` so that state dicts load
both ways: ``weight`` (gamma), ``bias`` (beta), ``running_mean``, ``running_var`` (unbiased) and
``num_batches_tracked``. Subclasses differ in one small hook, ``_check_input_dim``, and in
``forward``.
"""

from __future__ import annotations

from typing import Any, TypeAlias, TypeGuard

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parameter import is_lazy

from bnlab.norm.checks import check_norm_config


class NormBase(nn.Module):
    """Parameters and running statistics of a per-channel normalization layer."""

    _version = 2  # version 2 added num_batches_tracked (as in torch)
    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool
    weight: nn.Parameter | None
    bias: nn.Parameter | None
    running_mean: Tensor | None
    running_var: Tensor | None
    num_batches_tracked: Tensor | None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        check_norm_config(num_features, eps, momentum)
        # nn.Module's, not the next class's: BatchNorm also derives from torch's _BatchNorm,
        # whose constructor would build a second set of the same parameters and buffers.
        nn.Module.__init__(self)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batch seen (all in place)."""
        if self.track_running_stats:
            assert self.running_mean is not None and self.running_var is not None
            assert self.num_batches_tracked is not None
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, gamma to 1 and beta to 0: the identity at init."""
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        """The one hook subclasses change: which input ranks the layer accepts."""
        if input.dim() < 2:
            raise ValueError(
                f"expected an input of shape (N, C, *) with at least 2 dims (got {input.dim()}D "
                f"input of shape {tuple(input.shape)})"
            )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # All or nothing: if any entry of ours has the wrong shape, copy none of them (torch
        # would copy the matching ones, then report the mismatch).
        mine = {**dict(self.named_parameters(recurse=False)),
                **dict(self.named_buffers(recurse=False))}
        bad = [f"size mismatch for {prefix}{name}: copying a param with shape "
               f"{state_dict[prefix + name].shape} from checkpoint, the shape in current model "
               f"is {t.shape}."
               for name, t in mine.items()
               if not is_lazy(t) and isinstance(state_dict.get(prefix + name), Tensor)
               and state_dict[prefix + name].shape != t.shape]
        if bad:
            error_msgs.extend(bad)
            return
        version = local_metadata.get("version")
        if (version is None or version < 2) and self.track_running_stats:
            # State dicts from before version 2 have no num_batches_tracked: keep ours (or 0).
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                nbt = self.num_batches_tracked
                keep = nbt is not None and nbt.device != torch.device("meta")
                state_dict[key] = nbt if keep else torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


# A BatchNorm-style layer of either library: both declare the same parameters and buffers.
BatchNormLike: TypeAlias = _BatchNorm | NormBase


def is_batch_norm(module: nn.Module) -> TypeGuard[BatchNormLike]:
    """A BatchNorm-style layer of either library (torch's ``_BatchNorm`` or bnlab's NormBase)."""
    return isinstance(module, (_BatchNorm, NormBase))


def tracked_batch_norms(model: nn.Module) -> list[BatchNormLike]:
    """The BatchNorm-style layers of `model` that keep running statistics, in module order."""
    return [m for m in model.modules() if is_batch_norm(m)
            and m.track_running_stats and m.running_mean is not None]
