"""What a run trains, built: the network, its BatchNorm settings, its optimizer and schedule.

The network is bnlab's preset, built with the run's BatchNorm settings passed to every norm
layer's constructor, or *bnlab's copy* of the user's network: the user's module object is never
rewritten (fusion, SyncBatchNorm conversion and the settings below act on the copy only), and
the trained state is copied back into it (``copy_back``), so a network given to ``train`` ends
trained in place, as the textbook's ``train_ch6`` leaves it, with its own classes and hooks.

Initialization: the presets get the chapter's (Xavier-uniform weights, as ``train_ch6``); a
user's network keeps its own unless ``init`` is given (``xavier``, ``default`` = each layer's
``reset_parameters``, ``gaussian-STD``). Lazy layers (``nn.LazyLinear``, ``LazyConv2d``,
``LazyBatchNorm2d``...) are materialized by the dry batch (``bnlab.train.dry``) before any
of this.

The learning rate at optimizer step ``t`` of ``S`` per epoch, ``E`` epochs, ``W`` warm-up
epochs, ``T = E * S`` steps in all:

    lr(t) = lr * (t + 1) / (W * S)                       t < W * S      (linear warm-up)
          = lr * f((t - W * S) / (T - W * S))            otherwise

with ``f(p) = 1`` (constant), ``0.1 ** (milestones passed)`` at 1/2 and 3/4 of the epochs
(step), or ``(1 + cos(pi * p)) / 2`` (cosine). It depends on ``t`` alone, so a resumed run
continues the same curve.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
from torch import nn

from bnlab.errors import UserError
from bnlab.models import build_model
from bnlab.norm.base import is_batch_norm
from bnlab.norm.convert import convert
from bnlab.norm.dataflow import CONV_LINEAR, only_input, trace
from bnlab.norm.fused import fuse
from bnlab.norm.lazy import copy_module
from bnlab.norm.registry import Norm
from bnlab.norm.renormalize import is_norm_layer
from bnlab.norm.textbook import TextbookBatchNorm
from bnlab.train.config import TrainConfig, gaussian_std, layer_momentum

__all__ = ["PRESET_INIT", "apply_settings", "copy_back", "initialize", "lr_factor", "make_model",
           "make_optimizer", "norm_settings", "set_lr", "weights_before_norm"]

PRESET_INIT = "xavier"  # the chapter's initialization of bnlab's own models
_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)  # the layers an `init` sets


def norm_settings(config: TrainConfig) -> dict[str, float | None]:
    """The BatchNorm constructor arguments a run sets (torch's meaning of momentum)."""
    out: dict[str, float | None] = {}
    if config.bn_momentum is not None:
        out["momentum"] = layer_momentum(config.bn_momentum)
    if config.bn_eps is not None:
        out["eps"] = config.bn_eps
    return out


def make_model(config: TrainConfig, network: nn.Module | None = None) -> nn.Module:
    """The network a run trains, seeded by ``config.seed``: the preset ``config.model`` (built
    with the run's BatchNorm settings, initialized as the chapter does), or a deep copy of
    `network` with the settings applied to its layers (its lazy layers stay lazy: the dry
    batch materializes them). Not yet fused: see ``finish``."""
    torch.manual_seed(config.seed)
    settings = norm_settings(config)
    if network is None:
        if config.norm == "textbook" and settings.get("momentum", 0.0) is None:
            raise UserError("--bn-momentum none (a cumulative average) has no counterpart in "
                            "the textbook's layer (its moving average has a fixed momentum); "
                            "give a number, or another --norm")
        kw = dict(settings)
        momentum = kw.get("momentum")
        if config.norm == "textbook" and momentum is not None:
            kw["momentum"] = 1.0 - momentum  # the textbook weighs the old value
        try:
            model = build_model(config.model, Norm(config.norm, kw) if kw else config.norm)
        except TypeError as e:  # a norm without running averages (group, layer) has no momentum
            raise UserError(f"--bn-momentum/--bn-eps do not apply to --norm {config.norm} "
                            f"({e}); leave them out for this norm") from e
        if settings and not any(is_norm_layer(m) for m in model.modules()):
            raise UserError(f"--bn-momentum/--bn-eps were given, but --norm {config.norm} "
                            f"builds no normalization layer to apply them to; leave them out")
        initialize(model, config.init or PRESET_INIT)
        return model
    model = copy_module(network)  # bnlab's copy: the user's object is never rewritten
    apply_settings(model, settings)
    return model


def finish(model: nn.Module, config: TrainConfig) -> nn.Module:
    """After the dry batch: the user's `init` if given, SyncBatchNorm, fusion (on the copy)."""
    if config.init is not None and not _is_preset(config):
        initialize(model, config.init)
    if config.sync_bn:  # plain BatchNorm when run as a single process
        model = convert(model, to="sync", inplace=True)
    if config.fuse:
        model = fuse(model, inplace=True)
    return model


def _is_preset(config: TrainConfig) -> bool:
    from bnlab.models import MODELS

    return config.model in MODELS


def initialize(model: nn.Module, init: str) -> None:
    """Set every conv/linear weight by `init`: ``xavier``, ``gaussian-STD``, or ``default``
    (each layer as its constructor initialized it: nothing to do)."""
    std = gaussian_std(init)
    for m in model.modules():
        if not isinstance(m, _WEIGHTED):
            continue
        if init == "xavier":
            nn.init.xavier_uniform_(m.weight)
        elif std is not None:  # Ioffe & Szegedy's small Gaussian weights
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def apply_settings(model: nn.Module, settings: dict[str, float | None]) -> None:
    """The run's momentum/eps on bnlab's copy of a user network (built by the user's code, so
    they cannot be passed at construction); a norm the setting cannot reach is an error."""
    if not settings:
        return
    norms = [m for m in model.modules() if is_norm_layer(m)]
    averaged = [m for m in norms if is_batch_norm(m) or isinstance(m, TextbookBatchNorm)]
    for flag, key, targets in (("--bn-eps", "eps", norms),
                               ("--bn-momentum", "momentum", averaged)):
        if key in settings and not targets:
            raise UserError(f"{flag} was given, but the network has no "
                            f"{'normalization' if key == 'eps' else 'BatchNorm'} layer to apply "
                            f"it to; leave it out")
    for m in norms:
        if "eps" in settings:
            setattr(m, "eps", settings["eps"])  # noqa: B010 (every norm layer has eps)
    momentum = settings.get("momentum", 0.0)
    for m in averaged if "momentum" in settings else []:
        if isinstance(m, TextbookBatchNorm):
            if momentum is None:
                raise UserError("--bn-momentum none (a cumulative average) has no "
                                "counterpart in the textbook's layer; give a number")
            setattr(m, "momentum", 1.0 - momentum)  # noqa: B010 (the textbook's convention)
        else:
            setattr(m, "momentum", momentum)  # noqa: B010


def copy_back(trained: nn.Module, network: nn.Module, config: TrainConfig) -> None:
    """The trained state into the user's own network, in place (its tensors keep their
    identity; lazy layers materialize from the state's shapes; same keys: fusion and
    SyncBatchNorm keep them), with the run's BatchNorm settings, which the state was trained
    with (a different eps would compute another function)."""
    with torch.no_grad():
        network.load_state_dict(trained.state_dict())
    apply_settings(network, norm_settings(config))


def weights_before_norm(model: nn.Module) -> list[str]:
    """The names of the conv/linear weights whose output goes straight, and only, into a
    normalization layer: the weights a batch (or group, layer) norm makes scale invariant,
    ``norm(a W x) = norm(W x)`` for ``a > 0``. Read from the forward's ``torch.fx`` dataflow
    (not from the order of the children); a network fx cannot trace is refused."""
    graph, why = trace(model)
    if graph is None:
        raise UserError(f"--no-decay-before-norm needs the network's dataflow, and torch.fx "
                        f"cannot trace its forward ({why}); drop --no-decay-before-norm")
    modules = dict(model.named_modules())
    found: list[str] = []
    for node in graph.nodes:
        if node.op != "call_module" or not is_norm_layer(modules[str(node.target)]):
            continue
        source = node.args[0] if node.args else None
        if not (isinstance(source, fx.Node) and source.op == "call_module"
                and only_input(node, source) and len(source.users) == 1):
            continue
        name = f"{source.target}.weight"
        if isinstance(modules[str(source.target)], CONV_LINEAR) and name not in found:
            found.append(name)
    params = dict(model.named_parameters())  # (a parametrized weight is not a parameter)
    return [name for name in found if name in params]


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer. Parameters left out of weight decay form a second group without it:
    with ``no_decay_on_norm`` the normalization layers' gamma and beta, with
    ``no_decay_before_norm`` the weights that feed a normalization layer
    (``weights_before_norm``)."""
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("the network has no trainable parameters (none with requires_grad), "
                        "so there is nothing to train; give it layers with weights")
    spared: set[int] = set()
    if config.no_decay_on_norm:
        spared |= {id(p) for m in model.modules() if is_norm_layer(m) for p in m.parameters()}
    if config.no_decay_before_norm:
        names = weights_before_norm(model)
        if not names:
            raise UserError("--no-decay-before-norm: no conv or linear layer of the network "
                            "feeds a normalization layer directly, so there is no weight to "
                            "spare; drop --no-decay-before-norm")
        params = dict(model.named_parameters())
        spared |= {id(params[n]) for n in names}
    groups: list[dict] = [{"params": list(model.parameters())}]
    if spared:
        groups = [{"params": [p for p in model.parameters() if id(p) not in spared]},
                  {"params": [p for p in model.parameters() if id(p) in spared],
                   "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    lr, wd = config.lr, config.weight_decay
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
    if config.optimizer == "adam":  # (configs of earlier versions: Adam with an L2 penalty)
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=wd,
                           nesterov=config.optimizer == "nesterov")


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """lr(step) / lr: the warm-up and schedule of the module docstring."""
    warm = config.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if config.schedule == "step":
        epoch = step // steps_per_epoch
        milestones = [m for m in (config.epochs // 2, (3 * config.epochs) // 4) if m > 0]
        return 0.1 ** sum(epoch >= m for m in milestones)
    if config.schedule == "cosine":
        total = config.epochs * steps_per_epoch
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int,
           steps_per_epoch: int) -> float:
    """Set every group's learning rate for `step`; returns it."""
    lr = config.lr * lr_factor(config, step, steps_per_epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
