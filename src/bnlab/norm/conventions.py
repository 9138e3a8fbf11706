"""BatchNorm conventions of other frameworks, and adapters into bnlab/torch's and back.

Frameworks agree on the math and disagree on three knobs:

================  ==============  =========  ===========================  ======================
convention        momentum means  default    running variance stored      default eps
================  ==============  =========  ===========================  ======================
torch / bnlab     new batch       0.1        unbiased (batch var M/(M-1)) 1e-5
keras (TF)        old average     0.99       biased (batch variance)      1e-3
flax              old average     0.99       biased                       1e-5
textbook (d2l)    old average     0.9        biased                       1e-5
================  ==============  =========  ===========================  ======================

Momenta convert exactly (``1 - m``). Variances convert by the factor M / (M - 1), where M is
the number of values per channel in a training batch (N for (N, C) inputs, N*H*W for images):
exact for every batch folded in with that M; the initial value 1 is scaled too, a difference
that decays as (1 - momentum)^steps. eps is a constant of the layer, carried as is.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["CONVENTIONS", "Convention", "from_convention", "to_convention"]


@dataclass(frozen=True)
class Convention:
    name: str
    momentum_is_old_weight: bool
    default_momentum: float
    unbiased_running_var: bool
    default_eps: float


CONVENTIONS: dict[str, Convention] = {
    "torch": Convention("torch", False, 0.1, True, 1e-5),
    "keras": Convention("keras", True, 0.99, False, 1e-3),
    "flax": Convention("flax", True, 0.99, False, 1e-5),
    "textbook": Convention("textbook", True, 0.9, False, 1e-5),
}


def _get(name: str) -> Convention:
    if name not in CONVENTIONS:
        raise ValueError(f"unknown convention {name!r}; choose one of {sorted(CONVENTIONS)}")
    return CONVENTIONS[name]


def _torch_momentum(conv: Convention, momentum: float) -> float:
    return 1.0 - momentum if conv.momentum_is_old_weight else momentum


def _variance(conv: Convention, running_var: Tensor, m: int | None, to_torch: bool) -> Tensor:
    """Running variance between `conv`'s convention and torch's (factor M/(M-1) or back)."""
    if conv.unbiased_running_var:
        return running_var.clone()
    if m is None or m < 2:
        raise ValueError(f"{conv.name} stores the biased variance; converting needs "
                         f"values_per_channel (M >= 2: N, or N*H*W for images)")
    return running_var * (m / (m - 1) if to_torch else (m - 1) / m)


def from_convention(name: str, *, momentum: float | None = None,
                    running_var: Tensor | None = None, values_per_channel: int | None = None,
                    eps: float | None = None) -> dict[str, object]:
    """Translate another framework's BatchNorm settings/statistics into torch/bnlab terms.

    Returns a dict with ``momentum``, ``eps`` and (when given) ``running_var``, ready for
    ``BatchNorm(C, momentum=..., eps=...)`` and ``load_state_dict``.
    """
    conv = _get(name)
    out: dict[str, object] = {
        "momentum": _torch_momentum(conv, conv.default_momentum if momentum is None
                                    else momentum),
        "eps": conv.default_eps if eps is None else eps,
    }
    if running_var is not None:
        out["running_var"] = _variance(conv, running_var, values_per_channel, to_torch=True)
    return out


def to_convention(name: str, *, momentum: float, running_var: Tensor | None = None,
                  values_per_channel: int | None = None, eps: float = 1e-5) -> dict[str, object]:
    """The inverse of ``from_convention``: torch/bnlab settings in `name`'s terms."""
    conv = _get(name)
    out: dict[str, object] = {"momentum": _torch_momentum(conv, momentum), "eps": eps}
    if running_var is not None:
        out["running_var"] = _variance(conv, running_var, values_per_channel, to_torch=False)
    return out
