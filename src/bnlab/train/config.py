"""The typed configuration of one training run, validated on construction."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["CUSTOM", "MAX_DIST_TIMEOUT", "MAX_SEED", "MAX_THREADS", "OWN_NORM",
           "RESUME_FREE_FIELDS", "TrainConfig", "gaussian_std"]

OPTIMIZERS = ("sgd", "nesterov", "adamw", "adam")
SCHEDULES = ("constant", "step", "cosine")
AMPS = ("bf16", "fp16")
CUMULATIVE = "cumulative"  # bn_momentum: torch's momentum=None, the cumulative average
DEVICES = ("auto", "cpu", "cuda")
INITS = ("xavier", "default", "gaussian-STD")
GAUSSIAN_INIT = "gaussian-"  # "gaussian-0.01": weights ~ N(0, 0.01^2), biases 0
# Fields that may change between an interrupted run and its resumption (they do not change the
# numbers on CPU): everything else must match the run directory's config.json.
RESUME_FREE_FIELDS = frozenset({"threads", "data_dir", "progress", "dist_timeout",
                                "tensorboard"})
# Parts of a user model's description that may differ on resume (cosmetic: not the weights).
UNMATCHED_INFO = frozenset({"repr"})
_INFO = ("model_info", "data_info")
PROVENANCE = "provenance"  # config.json's key for bnlab.provenance.provenance()
# config.model/norm/dataset of a user network or user data (bnlab.train.user_model)
CUSTOM = "custom"
OWN_NORM = "own"  # a user network whose factory takes no norm: its own layers, as written
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
MAX_SEED = 2**32 - 1  # the batch order seeds a generator with seed * 1_000_003 + epoch
MAX_THREADS = 1024  # torch's thread pool crashes the process (a signal) far beyond this
MAX_DIST_TIMEOUT = 365 * 24 * 3600.0  # a year; far beyond it a timedelta overflows
_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float),
                                       "bool": (bool,), "dict": (dict,)}


@dataclass(frozen=True)
class TrainConfig:
    """One run. Defaults are the textbook's LeNet-BN recipe (d2l ``train_ch6``)."""

    model: str = "lenet-bn"
    norm: str = "bnlab"
    dataset: str = "fashion-mnist"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1.0
    optimizer: str = "sgd"  # plain SGD, no momentum, as the textbook
    momentum: float = 0.0
    weight_decay: float = 0.0
    no_decay_on_norm: bool = False
    schedule: str = "constant"
    warmup_epochs: int = 0
    amp: str | None = None
    # "xavier": Xavier-uniform on conv/linear weights, as the textbook; "default": each
    # layer's own (torch's); "gaussian-STD" (e.g. "gaussian-0.01"): weights ~ N(0, STD^2) and
    # zero biases, Ioffe & Szegedy's "small random Gaussian values" (their Figure 1).
    init: str | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    data_dir: str | None = None
    normalize: bool = False  # standardize inputs with the training set's mean/std (per channel)
    augment: bool = False  # random crop (padding 4) + horizontal flip per batch (CIFAR's)
    drop_last: bool = False
    limit_train: int | None = None  # use only the first N training examples (quick runs)
    limit_test: int | None = None
    progress: bool = True  # a progress bar when attached to a terminal
    sync_bn: bool = False  # SyncBatchNorm across data-parallel ranks (torchrun)
    # Run each bnlab BatchNorm -> sigmoid (-> 2x2 avg pool) or -> ReLU as one fused layer (same
    # function, bnlab.norm.fused); only where the fast kernels are available.
    fuse: bool = True
    dist_timeout: float = 120.0  # seconds before a collective waiting on a dead rank fails
    tensorboard: bool = False  # also write TensorBoard events into RUN_DIR/tensorboard
    # Also evaluate each epoch with BatchNorm statistics re-estimated by PreciseBN over this
    # many training examples (metric "test_acc_precise"; 0: off). Models without BN skip it.
    precise_bn: int = 0
    # The running-average momentum of every BatchNorm layer (torch's meaning: the weight of the
    # new batch); None leaves each layer's own (0.1 for bnlab's and torch's layers).
    bn_momentum: float | str | None = None
    bn_eps: float | None = None
    # What a user network / user data were (bnlab.train.user_model, bnlab.data.custom): set by
    # the trainer, None for bnlab's own models and datasets.
    model_info: dict[str, Any] | None = None
    data_info: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from bnlab.data.registry import DATASETS
        from bnlab.models import MODELS, input_shape
        from bnlab.norm.registry import NORMS

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"invalid {name}={getattr(self, name)!r}: {why}")

        for f in fields(self):  # types first: a config.json may hold anything
            value = getattr(self, f.name)
            kind = str(f.type).split("|")[0].split("[")[0].strip()
            if value is None and str(f.type).endswith("None"):
                continue
            if f.name == "bn_momentum" and value == CUMULATIVE:
                continue
            if not isinstance(value, _TYPES[kind]) or (kind != "bool" and isinstance(value,
                                                                                 bool)):
                raise bad(f.name, f"must be {'an' if kind == 'int' else 'a'} {kind}")
        user_model = self.model == CUSTOM or bool(_IMPORT_PATH.match(self.model))
        if self.model not in MODELS and not user_model:
            raise bad("model", f"choose one of {', '.join(sorted(MODELS))}, or "
                               f"package.module:factory for your own network")
        user_data = self.dataset == CUSTOM or bool(_IMPORT_PATH.match(self.dataset))
        if self.dataset not in DATASETS and not user_data:
            raise bad("dataset", f"choose one of {', '.join(sorted(DATASETS))}, or "
                                 f"package.module:factory for your own data")
        if not (user_model or user_data):  # (a user's network or data: checked when it runs)
            self._check_pairing(DATASETS[self.dataset], input_shape(self.model))
        if self.norm not in NORMS and not (user_model and self.norm == OWN_NORM):
            raise bad("norm", f"choose one of {', '.join(sorted(NORMS))}")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"choose one of {', '.join(OPTIMIZERS)}")
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d+|mps", self.device):
            raise bad("device", f"choose one of {', '.join(DEVICES)}")
        if self.init is not None and self.init not in INITS[:2] and \
                gaussian_std(self.init) is None:
            raise bad("init", f"choose one of {', '.join(INITS)} (STD a positive number, "
                              f"e.g. gaussian-0.01)")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be a positive integer")
        for name in ("threads", "limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise bad(name, "must be a positive integer (or unset)")
        if self.threads is not None and self.threads > MAX_THREADS:
            raise bad("threads", f"at most {MAX_THREADS}")
        if self.precise_bn < 0 or self.precise_bn == 1:
            raise bad("precise_bn", "must be 0 (off) or a number of examples >= 2")
        if self.bn_momentum is not None and self.bn_momentum != CUMULATIVE and not (
                not isinstance(self.bn_momentum, str) and math.isfinite(self.bn_momentum)
                and 0 < self.bn_momentum <= 1):
            raise bad("bn_momentum", "must be in (0, 1] (or unset for the layers' own)")
        if not 0 <= self.seed <= MAX_SEED:
            raise bad("seed", f"must be in [0, {MAX_SEED}]")
        if self.data_dir is not None and not self.data_dir.strip():
            raise bad("data_dir", "must name a directory (or be unset)")
        if not (math.isfinite(self.dist_timeout) and 0 < self.dist_timeout <= MAX_DIST_TIMEOUT):
            raise bad("dist_timeout", f"must be a positive number of seconds, at most "
                                      f"{MAX_DIST_TIMEOUT:g}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "must be a positive finite number")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1) or not (
                math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"momentum must be in [0, 1) and weight_decay >= 0 (finite numbers)"
                             f", got momentum={self.momentum!r}, "
                             f"weight_decay={self.weight_decay!r}")

    def _check_pairing(self, spec: Any, wants: tuple[int, int, int]) -> None:
        """The model must read the dataset's images: say which models and datasets fit."""
        from bnlab.data.registry import DATASETS
        from bnlab.models import INPUTS

        has = spec.image_shape
        if wants == has:
            return
        models = sorted(m for m, shape in INPUTS.items() if shape == has)
        datasets = sorted(d for d, s in DATASETS.items() if s.image_shape == wants)
        size = "x".join(map(str, has))
        raise ValueError(
            f"invalid model={self.model!r} for dataset={self.dataset!r}: the model reads "
            f"{'x'.join(map(str, wants))} images, {self.dataset} images are {size}; choose a "
            f"model for {self.dataset} ({', '.join(models) or 'none yet'}) or a dataset for "
            f"{self.model} ({', '.join(datasets) or 'none yet'})")

    def to_dict(self) -> dict[str, Any]:
        """The fields, less the user-input descriptions when unset (so a run of bnlab's own
        model and dataset writes the same config.json as before they existed)."""
        d = asdict(self)
        for key in _INFO:
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        # config.json also records where the run came from (bnlab.provenance): not a setting
        data = {k: v for k, v in data.items() if k != PROVENANCE}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        return cls(**data)

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields that differ (ignoring RESUME_FREE_FIELDS), as 'name: a != b' lines."""
        a, b = _matched(self.to_dict()), _matched(other.to_dict())
        out = []
        for k in [*a, *(k for k in b if k not in a)]:  # field order
            x, y = a.get(k), b.get(k)
            if k in RESUME_FREE_FIELDS or x == y:
                continue
            if isinstance(x, dict) and isinstance(y, dict):  # name the part that differs
                out += [f"{k}.{part}: {_short(x.get(part))} != {_short(y.get(part))}"
                        for part in sorted(set(x) | set(y)) if x.get(part) != y.get(part)]
            else:
                out.append(f"{k}: {_short(x)} != {_short(y)}")
        return out


def gaussian_std(init: str) -> float | None:
    """The STD of a "gaussian-STD" init (a positive finite number), else None."""
    if not init.startswith(GAUSSIAN_INIT):
        return None
    try:
        std = float(init[len(GAUSSIAN_INIT):])
    except ValueError:
        return None
    return std if math.isfinite(std) and std > 0 else None


def _matched(d: dict[str, Any]) -> dict[str, Any]:
    """The config as resuming compares it: the info dicts without their cosmetic parts."""
    for key in _INFO:
        if isinstance(d.get(key), dict):
            d[key] = {k: v for k, v in d[key].items() if k not in UNMATCHED_INFO}
    return d


def _short(value: Any) -> str:
    """A value for an error line: a user model's state or repr can be thousands of characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
