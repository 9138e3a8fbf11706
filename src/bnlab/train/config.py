"""The typed configuration of one training run: the one place each setting is stated.

Every field is declared with ``bnlab.settings.setting``: its annotation is its type, and the
declaration holds its default, allowed range or choices, help text and flag. The ``bnlab
train`` flags, their ``--help`` defaults, the keys a config file may hold and the validation
below are all generated from these declarations (``bnlab.settings``); nothing restates them.
``__post_init__`` validates each field (``settings.validate``), then the rules that tie two
fields together (``_combinations``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from bnlab.settings import setting, short, validate

__all__ = ["BN_CUMULATIVE", "CUSTOM", "MAX_COUNT", "MAX_DIST_TIMEOUT", "MAX_SEED",
           "MAX_THREADS", "OWN_NORM", "RECORDS", "RESUME_FREE_FIELDS", "TrainConfig",
           "gaussian_std", "layer_momentum"]

OPTIMIZERS = ("sgd", "nesterov", "adamw")
LEGACY_OPTIMIZERS = ("adam",)  # config.json files of runs made before adamw
SCHEDULES = ("constant", "step", "cosine")
AMP = ("bf16", "fp16")
INITS = ("xavier", "default", "gaussian-STD")
GAUSSIAN_INIT = "gaussian-"  # "gaussian-0.01": weights ~ N(0, 0.01^2), biases 0
BN_CUMULATIVE = "cumulative"  # bn_momentum: torch's momentum=None, the cumulative average
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,4})?)$")
# Fields that may change between an interrupted run and its resumption (they do not change the
# numbers on CPU): everything else must match the run directory's config.json.
RESUME_FREE_FIELDS = frozenset({"threads", "data_dir", "progress", "dist_timeout",
                                "tensorboard"})
# Parts of a user model's description that may differ on resume (cosmetic: not the weights).
UNMATCHED_INFO = frozenset({"repr"})
_INFO = ("model_info", "data_info")
PROVENANCE = "provenance"  # config.json's key for bnlab.provenance.provenance()
# What config.json records besides the settings: a config file's reader skips these keys.
RECORDS = frozenset({PROVENANCE, *_INFO})
# config.model/norm/dataset of a user network or user data (bnlab.train.user_model)
CUSTOM = "custom"
OWN_NORM = "own"  # a user network whose factory takes no norm: its own layers, as written
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
MAX_SEED = 2**32 - 1  # the batch order seeds a generator with seed * 1_000_003 + epoch
MAX_THREADS = 1024  # torch's thread pool crashes the process (a signal) far beyond this
MAX_DIST_TIMEOUT = 365 * 24 * 3600.0  # a year; far beyond it a timedelta overflows
MAX_COUNT = 2**31 - 1  # epochs, batch sizes, example counts: far beyond any run


def _user(name: str) -> bool:
    return name == CUSTOM or bool(_IMPORT_PATH.match(name))


def _model_names() -> list[str]:
    from bnlab.models import MODELS

    return sorted(MODELS)


def _dataset_names() -> list[str]:
    from bnlab.data.registry import DATASETS

    return sorted(DATASETS)


def _norm_names() -> list[str]:
    from bnlab.norm.registry import norm_names

    return list(norm_names())


def _check_model(name: str) -> str | None:
    if name in _model_names() or _user(name):
        return None
    return (f"choose one of {', '.join(_model_names())}, or package.module:factory for your "
            f"own network")


def _check_dataset(name: str) -> str | None:
    if name in _dataset_names() or _user(name):
        return None
    return (f"choose one of {', '.join(_dataset_names())}, or package.module:factory for your "
            f"own data")


def _check_init(init: str) -> str | None:
    if init in INITS[:2] or gaussian_std(init) is not None:
        return None
    return f"choose one of {', '.join(INITS)} (STD a positive number, e.g. gaussian-0.01)"


def _check_device(device: str) -> str | None:
    return None if _DEVICE.match(device) else "choose auto, cpu, cuda, cuda:N or mps"


def _check_precise(examples: int) -> str | None:
    return None if examples != 1 else "must be 0 (off) or a number of examples >= 2"


def _check_dir_name(name: str) -> str | None:
    return None if name.strip() else "must name a directory (or be unset)"


def _existing_dir(text: str) -> str:
    """--data-dir: a directory that exists (never a silent fall-back to another copy)."""
    if text.strip() and not os.path.isdir(text):
        what = "is not a directory" if os.path.exists(text) else "does not exist"
        raise ValueError(f"{text!r} {what}")
    return text


def _bn_momentum(text: str) -> float | str:
    """--bn-momentum: a number, or none/cumulative for the cumulative average."""
    return BN_CUMULATIVE if text.lower() in ("none", BN_CUMULATIVE) else float(text)


def layer_momentum(value: float | str) -> float | None:
    """What a BatchNorm layer's ``momentum`` is set to for a (set) ``bn_momentum``."""
    return None if value == BN_CUMULATIVE else float(value)


@dataclass(frozen=True)
class TrainConfig:
    """One run. Defaults are the textbook's LeNet-BN recipe (d2l ``train_ch6``)."""

    model: str = setting(
        "lenet-bn", lambda: f"network: {', '.join(_model_names())}, or package.module:factory "
        f"for your own (a function returning an nn.Module, importable from the current "
        f"directory or PYTHONPATH)", check=_check_model, metavar="MODEL",
        bad=("", "no-such-name", "1mod:make", "mod:", "mod:make:more"))
    norm: str = setting("bnlab", "normalization layer", choices=_norm_names,
                        legacy=(OWN_NORM,))
    dataset: str = setting(
        "fashion-mnist", lambda: f"dataset: {', '.join(_dataset_names())}, or "
        f"package.module:factory returning your (train_data, test_data): tensors (x, y), "
        f"Datasets or DataLoaders", check=_check_dataset, metavar="DATASET",
        bad=("", "no-such-name", "1mod:make", "mod:", "mod:make:more"))
    epochs: int = setting(10, "passes over the training set", low=1, high=MAX_COUNT)
    batch_size: int = setting(256, "examples per step", low=1, high=MAX_COUNT)
    lr: float = setting(1.0, "learning rate (the textbook's for LeNet-BN)", low=0,
                        open_low=True)
    optimizer: str = setting("sgd", "sgd (plain SGD, as the textbook), nesterov (SGD with "
                             "Nesterov momentum: give --momentum) or adamw",
                             choices=OPTIMIZERS, legacy=LEGACY_OPTIMIZERS)
    momentum: float = setting(0.0, "SGD's momentum (not BatchNorm's: see --bn-momentum)",
                              low=0, high=1, open_high=True)
    weight_decay: float = setting(0.0, "weight decay (L2 for sgd/nesterov, decoupled for "
                                  "adamw)", low=0)
    no_decay_on_norm: bool = setting(False, "no weight decay on the normalization layers' "
                                     "gamma and beta (needs --weight-decay)")
    no_decay_before_norm: bool = setting(False, "no weight decay on the conv/linear weights "
                                         "whose output goes straight into a normalization "
                                         "layer (needs --weight-decay)")
    schedule: str = setting("constant", "learning-rate schedule over the epochs: constant, "
                            "step decay or cosine annealing", choices=SCHEDULES)
    warmup_epochs: int = setting(0, "epochs of linear learning-rate warm-up before the "
                                 "schedule (fewer than --epochs)", low=0, high=MAX_COUNT)
    # None: bnlab's presets get the textbook's Xavier-uniform, a user's network keeps its own
    # init; "default": each layer's own (torch's); "gaussian-STD" (e.g. "gaussian-0.01"):
    # weights ~ N(0, STD^2) and zero biases, Ioffe & Szegedy's "small random Gaussian values".
    init: str | None = setting(
        None, "xavier: Xavier-uniform conv/linear weights as the textbook; default: "
        "PyTorch's own; gaussian-STD: weights ~ N(0, STD^2), biases 0", check=_check_init,
        metavar="{" + ",".join(INITS) + "}", unset="xavier for bnlab's models, a network of "
        "your own keeps its initialization",
        bad=("", "x", "gaussian-", "gaussian-0", "gaussian--1", "gaussian-nan", "gaussian-inf",
             "gaussian-1e400"))
    seed: int = setting(0, "seed of the initial weights and batch order", low=0, high=MAX_SEED)
    device: str = setting("auto", "auto (cuda when available), cpu, cuda, cuda:N or mps",
                          check=_check_device, metavar="{auto,cpu,cuda,cuda:N,mps}",
                          bad=("tpu", "gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"))
    amp: str | None = setting(None, "mixed precision: autocast to bf16 (CPU or CUDA) or fp16 "
                              "(CUDA); BatchNorm is computed in float32", choices=AMP,
                              unset="off, float32")
    threads: int | None = setting(None, "torch CPU threads", low=1, high=MAX_THREADS,
                                  unset="torch's choice, all cores")
    data_dir: str | None = setting(
        None, "directory holding the dataset's files", check=_check_dir_name,
        parse=_existing_dir, unset="found automatically, see `bnlab data info`",
        bad=("", " ", "/no/such/directory"))
    normalize: bool = setting(False, "standardize the input pixels (per channel for colour "
                              "images)")
    augment: bool = setting(False, "random crop (padding 4) and horizontal flip of each "
                            "training batch (the standard CIFAR augmentation)")
    drop_last: bool = setting(False, "drop the last partial batch")
    limit_train: int | None = setting(None, "use the first N training examples", low=1,
                                      high=MAX_COUNT, unset="all")
    limit_test: int | None = setting(None, "use the first N test examples", low=1,
                                     high=MAX_COUNT, unset="all")
    progress: bool = setting(True, "progress bars on a terminal or in a notebook "
                             "(BNLAB_PROGRESS=1 draws them into a pipe or file too); "
                             "--no-progress: none")
    sync_bn: bool = setting(False, "synchronize BatchNorm statistics across data-parallel "
                            "ranks (run under torchrun --nproc_per_node=N -m bnlab train ...)")
    # Run each bnlab BatchNorm -> sigmoid (-> 2x2 avg pool) or -> ReLU as one fused layer (same
    # function, bnlab.norm.fused); only where the fast kernels are available.
    fuse: bool = setting(True, "run BatchNorm and the sigmoid (and pooling) or ReLU after it "
                         "as one fused layer where bnlab's fast kernels are available; "
                         "--no-fuse: separate layers")
    dist_timeout: float = setting(120.0, "seconds a rank waits on the others before failing",
                                  low=0, open_low=True, high=MAX_DIST_TIMEOUT)
    tensorboard: bool = setting(False, "also write TensorBoard events (per-step loss and lr, "
                                "per-epoch metrics, BatchNorm statistics histograms) into "
                                "OUT/tensorboard")
    # Also evaluate each epoch with BatchNorm statistics re-estimated by PreciseBN over this
    # many training examples (metric "test_acc_precise"; 0: off). Models without BN skip it.
    precise_bn: int = setting(0, "also evaluate each epoch with BatchNorm statistics "
                              "re-estimated by PreciseBN over N training examples (0: off)",
                              low=0, high=MAX_COUNT, check=_check_precise, metavar="N",
                              bad=("1",))
    # The running-average momentum of every BatchNorm layer (torch's meaning: the weight of
    # the new batch); "cumulative": torch's momentum=None; None: each layer's own.
    bn_momentum: float | str | None = setting(
        None, "BatchNorm's running-average momentum (torch's meaning: the weight of the new "
        "batch), in (0, 1]; none: the cumulative average (torch's momentum=None)", low=0,
        open_low=True, high=1, choices=(BN_CUMULATIVE,), parse=_bn_momentum,
        metavar="{M,none}", unset="each layer's own, 0.1 for bnlab's and torch's")
    bn_eps: float | None = setting(None, "BatchNorm's eps, added to the variance", low=0,
                                   open_low=True, unset="each layer's own, 1e-5")
    # What a user network / user data were (bnlab.train.user_model, bnlab.data.custom): set by
    # the trainer, None for bnlab's own models and datasets; never read from a config file.
    model_info: dict[str, Any] | None = setting(None, "what the user's network was",
                                                internal=True)
    data_info: dict[str, Any] | None = setting(None, "what the user's data were",
                                               internal=True)

    def __post_init__(self) -> None:
        validate(self)
        self._combinations()

    def _combinations(self) -> None:
        """The rules that tie fields together (each field alone is valid already)."""
        from bnlab.data.registry import DATASETS
        from bnlab.models import input_shape

        user_model, user_data = _user(self.model), _user(self.dataset)
        if not (user_model or user_data):  # (a user's network or data: checked when it runs)
            self._check_pairing(DATASETS[self.dataset], input_shape(self.model))
        if self.norm == OWN_NORM and not user_model:
            raise ValueError(f"invalid norm={self.norm!r}: only a network of your own keeps "
                             f"its own layers; choose one of {', '.join(_norm_names())}")
        if self.optimizer == "nesterov" and self.momentum == 0:
            raise ValueError("invalid momentum=0.0 with optimizer='nesterov': Nesterov's "
                             "method needs a momentum in (0, 1), e.g. --momentum 0.9")
        if self.momentum and self.optimizer not in ("sgd", "nesterov"):
            raise ValueError(f"invalid momentum={self.momentum!r} with optimizer="
                             f"{self.optimizer!r}: momentum is SGD's; use --optimizer "
                             f"nesterov or sgd, or drop --momentum")
        if self.no_decay_on_norm and self.weight_decay == 0:
            raise ValueError("invalid no_decay_on_norm=True with weight_decay=0.0: there is "
                             "no decay to leave out; give --weight-decay, or drop "
                             "--no-decay-on-norm")
        if self.no_decay_before_norm and self.weight_decay == 0:
            raise ValueError("invalid no_decay_before_norm=True with weight_decay=0.0: there "
                             "is no decay to leave out; give --weight-decay, or drop "
                             "--no-decay-before-norm")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"invalid warmup_epochs={self.warmup_epochs}: must be fewer than "
                             f"epochs={self.epochs}")

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
        _lazy_shapes_match(a, b)
        out = []
        for k in [*a, *(k for k in b if k not in a)]:  # field order
            x, y = a.get(k), b.get(k)
            if k in RESUME_FREE_FIELDS or x == y:
                continue
            if isinstance(x, dict) and isinstance(y, dict):  # name the part that differs
                out += [f"{k}.{part}: {short(x.get(part))} != {short(y.get(part))}"
                        for part in sorted(set(x) | set(y)) if x.get(part) != y.get(part)]
            else:
                out.append(f"{k}: {short(x)} != {short(y)}")
        return out


def gaussian_std(init: str | None) -> float | None:
    """The STD of a "gaussian-STD" init (a positive finite number), else None."""
    if init is None or not init.startswith(GAUSSIAN_INIT):
        return None
    try:
        std = float(init[len(GAUSSIAN_INIT):])
    except ValueError:
        return None
    return std if math.isfinite(std) and std > 0 else None


LAZY = "lazy"  # a lazy layer's recorded shape (bnlab.train.user_model): set by the first batch


def _lazy_shapes_match(a: dict[str, Any], b: dict[str, Any]) -> None:
    """A tensor recorded as lazy matches any shape: the same network object, given again
    after a run materialized its lazy layers, is still the same network."""
    sa, sb = ((d.get("model_info") or {}).get("state") for d in (a, b))
    if isinstance(sa, dict) and isinstance(sb, dict):
        for name in set(sa) & set(sb):
            if LAZY in (sa[name], sb[name]):
                sa[name] = sb[name] = LAZY


def _matched(d: dict[str, Any]) -> dict[str, Any]:
    """The config as resuming compares it: the info dicts without their cosmetic parts."""
    for key in _INFO:
        if isinstance(d.get(key), dict):
            d[key] = {k: v for k, v in d[key].items() if k not in UNMATCHED_INFO}
    return d
