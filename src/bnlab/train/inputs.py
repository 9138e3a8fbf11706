"""What a run trains: bnlab's registry model and dataset, or the user's network and data.

``resolve`` turns the arguments of ``train`` into a config that says what was trained (the
user's network and data described in ``model_info``/``data_info``, so config.json is the
record and resuming can refuse other ones) plus the objects to train. It runs before the run
directory is looked at, on every rank alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from bnlab.data.custom import describe as describe_data
from bnlab.errors import UserError
from bnlab.models import MODELS
from bnlab.train.config import CUSTOM, OWN_NORM, TrainConfig
from bnlab.train.user_model import (
    ModelInput,
    build,
    import_path,
    is_import_path,
    load_factory,
    takes_norm,
)
from bnlab.train.user_model import describe as describe_model
from bnlab.user_code import user_code

__all__ = ["Inputs", "build_user_model", "load_data", "resolve"]

DEFAULT_NORM = TrainConfig().norm
DEFAULT_BATCH = TrainConfig().batch_size


@dataclass
class Inputs:
    config: TrainConfig
    network: nn.Module | None = None  # the user's, built under config.seed; None: the registry's
    given: bool = False  # `network` is the caller's own object (trained state copied back)
    train_data: Any = None  # the user's data; None: bnlab's dataset config.dataset
    test_data: Any = None


def resolve(config: TrainConfig, model: ModelInput | None = None, train_data: Any = None,
            test_data: Any = None) -> Inputs:
    net = None
    given = isinstance(model, nn.Module)
    if model is not None or config.model not in MODELS:
        if model is None and config.model == CUSTOM:
            raise UserError("this config's model is 'custom' (a network given as a Python "
                            "object): pass the network again, train(config, out, model=net)")
        config, net = _resolve_model(config, config.model if model is None else model)
    source = None  # the data's import path (--dataset package.module:factory)
    if train_data is None and test_data is None and is_import_path(config.dataset):
        source = config.dataset
        train_data, test_data = load_data(source)
    if (train_data is None) != (test_data is None):
        raise UserError("pass both train_data and test_data (the textbook's train_iter and "
                        "test_iter), or neither to train on config.dataset")
    if train_data is None:
        if config.dataset == CUSTOM:
            raise UserError("this config's dataset is 'custom' (data given as Python objects): "
                            "pass them again, train(..., train_data=..., test_data=...)")
        return Inputs(config, net, given)
    for flag, asked in (("normalize", config.normalize), ("augment", config.augment),
                        ("data_dir", config.data_dir is not None)):
        if asked:  # bnlab's own image datasets only: never silently ignored
            raise UserError(f"{flag} applies to bnlab's own datasets, not to your data; do "
                            f"that in your Dataset (or tensors) and leave --"
                            f"{flag.replace('_', '-')} out")
    info: dict[str, Any] = {"factory": source, "train": describe_data(train_data, "train_data"),
                            "test": describe_data(test_data, "test_data")}
    batch = config.batch_size
    if isinstance(train_data, DataLoader):  # its batch size, unless another was asked for
        if batch not in (DEFAULT_BATCH, train_data.batch_size):
            raise UserError(f"batch size {batch} was asked for, but the training DataLoader "
                            f"batches {train_data.batch_size} examples; drop --batch-size "
                            f"(the DataLoader's is used) or give its dataset instead")
        batch = train_data.batch_size or batch  # (_dataset refused a None batch size)
    config = replace(config, dataset=source or CUSTOM, data_info=info, batch_size=batch)
    return Inputs(config, net, given, train_data, test_data)


def load_data(path: str) -> tuple[Any, Any]:
    """``package.module:factory`` returning ``(train_data, test_data)``."""
    factory = load_factory(path, "--dataset")
    with user_code(f"your data factory {path}"):
        data = factory()
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise UserError(f"--dataset {path}: returned an object of type {type(data).__name__}, "
                        f"not a pair (train_data, test_data); return the two, e.g. two Datasets")
    return data[0], data[1]


def _resolve_model(config: TrainConfig, model: ModelInput) -> tuple[TrainConfig, nn.Module]:
    if isinstance(model, nn.Module):
        path, takes, net = None, False, model
        _check_norm(config, type(model).__name__, takes)
    else:
        if isinstance(model, str):
            factory, path = load_factory(model), model
        elif callable(model):
            factory, path = model, import_path(model)
        else:
            raise UserError(f"model: an object of type {type(model).__name__} is not a network; "
                            f"pass an nn.Module, a function that returns one, or 'package.module:"
                            f"factory'")
        takes = takes_norm(factory)
        name: str = path or getattr(factory, "__qualname__", None) or repr(factory)
        _check_norm(config, name, takes)
        torch.manual_seed(config.seed)  # the factory's own initialization is seeded too
        with user_code(f"your model factory {name}"):
            net = build(factory, name, config.norm if takes else None)
    return replace(config, model=path or CUSTOM, norm=config.norm if takes else OWN_NORM,
                   model_info=describe_model(net, path, takes)), net


def _check_norm(config: TrainConfig, name: str, takes: bool) -> None:
    if not takes and config.norm not in (DEFAULT_NORM, OWN_NORM):
        raise UserError(f"norm {config.norm!r} cannot be applied: {name} takes no `norm` "
                        f"argument, so its own layers are trained; add a `norm` parameter "
                        f"to it (bnlab passes the name) or leave the norm at its default")


def build_user_model(config: TrainConfig, factory: ModelInput | None) -> nn.Module:
    """A fresh instance of the run's user network (for ``Run.model``).

    The caller names the factory: bnlab never imports code because a run directory (a file
    anyone may have written) names it.
    """
    if factory is None:
        raise UserError(f"this run trained your own network ({config.model}): pass its "
                        f"factory, run.model(factory) or run.model('package.module:factory'); "
                        f"bnlab does not import code that a run directory names")
    if isinstance(factory, nn.Module):
        return factory
    info = config.model_info or {}
    maker = load_factory(factory) if isinstance(factory, str) else factory
    return build(maker, config.model, config.norm if info.get("takes_norm") else None)
