"""What a study's arms run on: bnlab's LeNet and Fashion-MNIST, or the user's network and data.

``Subject`` is the one place where a study is pointed at another network or dataset. An arm
applies to the user's network unless

* the study (``Study.needs``) or the arm (``Arm.needs``) is built around a bnlab network, e.g.
  the sigmoid LeNet whose layers a probe reads: the reason is that field's text;
* the arm varies the normalization layer (its norm is not bnlab's BatchNorm) and the user's
  factory takes no ``norm`` parameter, so the layer cannot be swapped.

Arms that do not apply are listed in the study's table and verdict, never trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from bnlab.errors import UserError
from bnlab.models import MODELS
from bnlab.settings import problem
from bnlab.train import TrainConfig
from bnlab.train.user_model import load_factory, takes_norm

__all__ = ["Subject"]

BN = TrainConfig().norm  # the arm that a network with its own BatchNorm layers stands for


@dataclass
class Subject:
    """`model`: a registry name, ``package.module:factory`` or a zero-argument factory;
    `dataset`: a registry name or ``(train_data, test_data)`` (``bnlab.train.train``)."""

    model: str | Callable[..., nn.Module] | None = None
    dataset: str | tuple[Any, Any] | None = None
    # Whether the factory takes `norm`, as a study.json recorded it (``from_record``): a file
    # never makes bnlab import the module it names.
    recorded_takes_norm: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, nn.Module):
            raise UserError("a study trains every arm from scratch: pass a function that "
                            "builds the network (or package.module:factory), not a built one")
        if isinstance(self.model, str) and self.model in MODELS:
            self.takes_norm = True  # bnlab's models all take norm=
        elif isinstance(self.model, str) and self.recorded_takes_norm is not None:
            self.takes_norm = self.recorded_takes_norm
        elif isinstance(self.model, str):
            self.takes_norm = takes_norm(load_factory(self.model))
        else:
            self.takes_norm = self.model is not None and takes_norm(self.model)
        if self.dataset is not None and not isinstance(self.dataset, str) and not (
                isinstance(self.dataset, tuple) and len(self.dataset) == 2):
            raise UserError("dataset: pass a dataset name or a pair (train_data, test_data)")

    @property
    def default(self) -> bool:
        return self.model is None and self.dataset is None

    @property
    def name(self) -> str:
        """How the table and verdict name the network."""
        if self.model is None:
            return "bnlab's network"
        return self.model if isinstance(self.model, str) else getattr(
            self.model, "__qualname__", "your network")

    def not_applicable(self, config: TrainConfig, needs: str | None) -> str | None:
        """Why an arm cannot run on this subject (None: it can)."""
        if self.model is None:
            return None
        if needs:
            return needs
        if config.norm != BN and not self.takes_norm:
            return (f"varies the normalization layer, and {self.name} takes no `norm` "
                    f"parameter")
        return None

    def config(self, config: TrainConfig) -> TrainConfig:
        """The arm's config on this subject (the user's objects go to ``train_kw``)."""
        if isinstance(self.model, str):
            config = replace(config, model=self.model)
        if isinstance(self.dataset, str):
            config = replace(config, dataset=self.dataset)
        return config

    def train_kw(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.model is not None and not isinstance(self.model, str):
            kw["model"] = self.model
        if isinstance(self.dataset, tuple):
            kw["train_data"], kw["test_data"] = self.dataset
        return kw

    def record(self) -> dict[str, Any]:
        """What study.json says the arms ran on; ``model_arg``/``dataset_arg``: the names or
        import paths given (None: bnlab's own, or Python objects), which ``--analyze-only``
        reads back (``from_record``)."""
        data = self.dataset if isinstance(self.dataset, str) or self.dataset is None else \
            "custom (see each run's config.json)"
        return {"model": self.name, "dataset": data,
                "model_arg": self.model if isinstance(self.model, str) else None,
                "dataset_arg": self.dataset if isinstance(self.dataset, str) else None,
                "takes_norm": self.takes_norm}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Subject:
        """The subject a study.json recorded (``record``); objects cannot be rebuilt from a
        file, so a study of Python objects is analyzed again with them passed again."""
        def arg(key: str) -> str | None:  # a name or import path, as a flag would take it
            value = record.get(key)
            return value if isinstance(value, str) and not problem(
                TrainConfig, key.removesuffix("_arg"), value) else None

        norm = record.get("takes_norm")
        return cls(arg("model_arg"), arg("dataset_arg"),
                   norm if isinstance(norm, bool) else False)
