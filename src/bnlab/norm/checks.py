"""Argument checks shared by the functional core and the modules.

Where PyTorch raises an error for a case, bnlab raises the same exception type with the same
leading text (so code and tests written against torch keep working), then says how to fix it.
Where PyTorch is silent or cryptic, bnlab raises a clear error of its own. All checks run before
anything is computed: an error never leaves a running buffer half-updated.

Three moments are checked: a functional call (``check_batch_norm_args``: types and values of
every argument), a layer's construction (``check_norm_config`` and the ``check_*`` helpers the
variants use) and a layer's use (``check_layer_at_use``, first thing in ``forward``): attributes
changed after construction are held to the constructor's rules, and tensors a training step
could not write are refused before any is written. Wrong types are ``TypeError`` (except the
historical constructor checks of ``check_norm_config``), wrong values ``ValueError``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from numbers import Real
from typing import Any, TypeVar

import torch
from torch import Tensor

_HALF_TYPES = (torch.float16, torch.bfloat16)
T = TypeVar("T")


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_batch_norm_args(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: object,
    eps: float,
    *,
    check_batch_size: bool = True,
) -> None:
    """Raise a clear error for any argument batch_norm cannot use; return None otherwise.

    ``check_batch_size=False`` leaves the "more than 1 value per channel" check to the caller
    (a synchronized layer checks the count summed over all ranks instead of its own share).
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"batch_norm expects a torch.Tensor input, got {type(input).__name__}")
    if type(training) is not bool:
        raise TypeError(
            f"batch_norm training must be a bool, got {training!r} ({type(training).__name__}); "
            f"pass True (batch statistics, running buffers updated) or False (running "
            f"statistics); note that a string such as 'False' would count as true"
        )
    if type(eps) is not float:
        _check_real("batch_norm eps", eps)
    if input.dim() < 2:
        raise ValueError(
            f"batch_norm expects an input of shape (N, C, *) with at least 2 dims, got shape "
            f"{_shape(input)}; for a single sample of C features use x.unsqueeze(0) (N=1 only "
            f"works in eval mode)"
        )
    if not input.is_floating_point():
        raise TypeError(
            f"batch_norm expects a floating-point input, got {input.dtype}; convert it first, "
            f"e.g. x.float() (images stored as uint8 are usually scaled with x.float() / 255)"
        )
    if training and check_batch_size:
        per_channel = input.shape[0] * math.prod(input.shape[2:])  # values in each channel
        if per_channel == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size "
                f"{input.size()}; a batch of one sample has no batch statistics: use a "
                f"batch of at least 2, or call .eval() to normalize with the running statistics"
            )
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if not eps < math.inf:  # NaN or inf: every output would be NaN or beta
        raise ValueError(f"batch_norm eps must be finite, got {eps}; the usual value is 1e-5")
    if type(momentum) is not float and (not isinstance(momentum, Real)
                                        or isinstance(momentum, bool)):
        raise TypeError(
            f"batch_norm momentum must be a float, got {momentum!r}; a module's momentum=None "
            f"(cumulative average) is resolved to 1 / num_batches_tracked by the module"
        )
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            "running_mean and running_var must either both be None or neither be None: they "
            "are updated together (pass both buffers, or neither for batch statistics only)"
        )
    if running_mean is not None and torch.is_grad_enabled():
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if getattr(t, "requires_grad", False):  # torch raises too (and writes nothing)
                raise RuntimeError(
                    f"The function 'batch_norm' is not differentiable with respect to argument "
                    f"'{name}'. This input cannot have requires_grad True; pass a buffer "
                    f"(e.g. {name}.detach()) or call it under torch.no_grad()"
                )
    if training and running_mean is not None and running_var is not None:
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            # (a contiguous tensor cannot overlap itself: the common case costs one call)
            if not t.is_contiguous() and torch._debug_has_internal_overlap(t) == 1:
                raise RuntimeError(
                    f"batch_norm: {name} has several elements on one memory location (an "
                    f"expanded tensor?) and cannot be updated in place; pass a tensor of its "
                    f"own, e.g. {name}.clone()"
                )
    if not -math.inf < float(momentum) < math.inf:
        raise ValueError(f"batch_norm momentum must be finite, got {momentum}; it is the weight "
                         f"of the new batch in the running average (usually 0.1)")
    if not training and (running_mean is None or running_var is None):
        raise RuntimeError(
            "running_mean must be defined in evaluation mode: pass running buffers, or "
            "training=True to normalize with batch statistics"
        )

    channels = input.shape[1]
    on_cpu = input.is_cpu  # two CPU tensors share a device: no torch.device objects needed
    same_dtype = True
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"batch_norm {name} must be a torch.Tensor or None, got "
                            f"{type(t).__name__}; convert it with torch.as_tensor(...)")
        if t.numel() != channels:
            raise RuntimeError(
                f"{name} should contain {channels} elements not {t.numel()}: the input of shape "
                f"{_shape(input)} has {channels} channels on dim 1 but {name} was made for "
                f"{t.numel()} (check num_features, or the layer's position in the model)"
            )
        if not (on_cpu and t.is_cpu) and t.device != input.device:
            raise RuntimeError(
                f"batch_norm: {name} is on {t.device} but the input is on {input.device}; "
                f"move the module or tensors with .to({str(input.device)!r})"
            )
        same_dtype = same_dtype and t.dtype == input.dtype
    if not same_dtype:
        _check_dtypes(input, {"running_mean": running_mean, "running_var": running_var,
                              "weight": weight, "bias": bias})


def _check_dtypes(input: Tensor, tensors: dict[str, Tensor | None]) -> None:
    """Parameters and buffers share the input's dtype; half inputs may also use float32 ones."""
    present = {name: t.dtype for name, t in tensors.items() if t is not None}
    allowed = {input.dtype}
    if input.dtype in _HALF_TYPES:
        allowed.add(torch.float32)
    dtypes = set(present.values())
    if len(dtypes) == 1 and dtypes <= allowed:
        return
    listing = ", ".join(f"{n}={d}" for n, d in present.items())
    want = " or all torch.float32" if input.dtype in _HALF_TYPES else ""
    raise TypeError(
        f"batch_norm: input is {input.dtype} but {listing}; parameters and running statistics "
        f"must all be {input.dtype}{want}. Convert the module with .to({input.dtype}) or the "
        f"input with .to(<module dtype>)"
    )


def check_norm_config(num_features: object, eps: object, momentum: object) -> None:
    """Reject constructor arguments that can only produce garbage, at construction time."""
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
        raise ValueError(
            f"num_features must be a positive int (the C of an (N, C, *) input), got "
            f"{num_features!r}"
        )
    if not isinstance(eps, Real) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(
            f"eps must be a positive finite float (it keeps 1/sqrt(var + eps) finite), got "
            f"{eps!r}; the usual value is 1e-5"
        )
    if momentum is not None and (
        not isinstance(momentum, Real) or isinstance(momentum, bool)
        or not 0 <= float(momentum) <= 1
    ):
        raise ValueError(
            f"momentum must be in [0, 1] or None (cumulative average), got {momentum!r}. "
            f"bnlab follows PyTorch: momentum is the weight of the NEW batch (default 0.1); "
            f"a textbook/Keras momentum of 0.9 or 0.99 is 1 - momentum here"
        )


def traced_with_constant_shapes(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` under torch.jit.trace, where shapes read in Python are traced tensors and
    every check on one warns that the trace will treat it as a constant. It is one: a traced
    layer is specialised to its example's channel count and rank, as torch's own BatchNorm is.
    So those warnings are silenced here. (Callers test ``torch.jit.is_tracing()`` first, which
    torch.compile reads as False: nothing of this is on its path or on the eager one.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return fn(*args)


def _check_real(what: str, value: object) -> None:
    """A real number (int or float, not bool): the type part of a numeric argument's check."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{what} must be a float, got {value!r} ({type(value).__name__}); "
                        f"pass a number such as 1e-5")


def _describe(layer: Any) -> str:
    return f"{type(layer).__name__}({getattr(layer, 'num_features', '?')})"


def check_layer_at_use(layer: Any, update: bool) -> None:
    """First thing in a layer's forward: the checks a constructor made, made again at use.

    ``eps`` and ``momentum`` may have been set after construction (``bn.momentum = 0.9`` from a
    Keras habit, ``bn.eps = 0``): they must satisfy ``check_norm_config`` now too. When the
    call will `update` the running buffers, none of the tensors it writes (nor, under autograd,
    the parameters it saves) may be an inference tensor: torch refuses those only after writing
    some of them, which would leave the layer half-changed.
    """
    eps, momentum = layer.eps, getattr(layer, "momentum", None)
    # Fast path: the common, valid case costs two type tests and two comparisons.
    if not (type(eps) is float and 0.0 < eps < math.inf and (
            momentum is None or (type(momentum) is float and 0.0 <= momentum <= 1.0))):
        try:
            check_norm_config(layer.num_features, eps, momentum)
        except ValueError as e:
            raise ValueError(f"{_describe(layer)}: {e} (checked at use: the attribute was "
                             f"set after construction; set a valid value)") from None
    # (Compiled code is traced, not run: dynamo cannot trace the inference-mode queries.)
    if update and not torch.compiler.is_compiling() and not torch.is_inference_mode_enabled():
        for t in layer._buffers.values():
            if t is not None and t.is_inference():
                _inference_tensor_error(layer)
        if torch.is_grad_enabled():
            for t in layer._parameters.values():
                if t is not None and t.is_inference():
                    _inference_tensor_error(layer)


def _inference_tensor_error(layer: Any) -> None:
    names = [n for n, t in (*layer._buffers.items(), *layer._parameters.items())
             if t is not None and t.is_inference()]
    raise RuntimeError(
        f"{_describe(layer)}: {', '.join(names)} were created under torch.inference_mode() "
        f"and cannot be updated, or saved for backward, outside it (torch would refuse only "
        f"after writing some buffers). Build the layer outside inference mode "
        f"(torch.no_grad() is enough for evaluation code), or give it normal tensors with "
        f"copy.deepcopy(layer) outside inference mode; nothing was changed"
    )


def check_flag(owner: str, name: str, value: object) -> None:
    """A constructor's on/off option must be a bool: a string such as 'False' counts as true."""
    if type(value) is not bool:
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r} "
                        f"({type(value).__name__})")


def check_flags(owner: str, **flags: object) -> None:
    """``check_flag`` for each keyword: a variant's constructor passes its on/off options."""
    for name, value in flags.items():
        check_flag(owner, name, value)


def check_size(owner: str, name: str, value: object, *, minimum: int = 1) -> None:
    """A count or size must be an int >= `minimum`; True is not 1 and 2.5 is not 2."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r} "
                        f"({type(value).__name__}); pass a whole number such as 2")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")


def check_limit(owner: str, name: str, value: object, *, minimum: float) -> None:
    """A finite real number >= `minimum` (Batch Renorm's rmax and dmax)."""
    _check_real(f"{owner}: {name}", value)
    assert isinstance(value, Real)
    if not minimum <= float(value) < math.inf:  # NaN fails both comparisons
        raise ValueError(f"{owner}: {name} must be finite and >= {minimum}, got {value}")


def check_eps(owner: str, eps: object) -> None:
    """A functional eps: a real number (TypeError otherwise), positive and finite."""
    _check_real(f"{owner} eps", eps)
    assert isinstance(eps, Real)
    if not 0 < float(eps) < math.inf:
        raise ValueError(f"{owner} eps must be positive and finite, got {eps}; the usual value "
                         f"is 1e-5")


def check_tool_args(tool: str, model: object, **flags: object) -> None:
    """A tool's model must be an nn.Module, not scripted (nor any part of it, but for fuse), and
    its on/off options bools (inplace='no' is true)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{tool} expects an nn.Module (a model or a layer), got "
                        f"{type(model).__name__}")
    # A scripted module's code and layers are compiled: a tool would change nothing in it.
    # fuse only optimizes: a scripted part inside a model leaves the model untraceable, so
    # unfused (said in its report); every other tool would silently skip the layers inside.
    inside = tool != "fuse"
    for name, m in model.named_modules() if inside else [("", model)]:
        if isinstance(m, torch.jit.ScriptModule):
            where = f"its submodule {name!r} is" if name else "it is"
            raise ValueError(f"{tool} cannot change a scripted model: {where} a "
                             f"torch.jit.ScriptModule; apply {tool} to the nn.Module before "
                             f"torch.jit.script / torch.jit.trace")
    check_flags(tool, **flags)
