"""The user's own data: tensors ``(x, y)``, a torch ``Dataset`` or a ``DataLoader``.

Every kind is batched in bnlab's order (a permutation seeded by (seed, epoch), shares of each
global batch per rank: ``BatchLoader``), so a resumed run sees the same batches and a
data-parallel run the same global batches as with bnlab's own datasets. A ``DataLoader``
contributes its dataset, batch size, ``collate_fn``, workers and ``pin_memory``; its sampler
and shuffling are replaced by that order (else resume and torchrun could not reproduce it).

``describe(data)`` is what a run's config.json records: kind, class, size, one example's shape.
Two descriptions that are equal are the same data as far as resuming can tell.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import default_collate

from bnlab.data.loader import BatchLoader
from bnlab.errors import UserError
from bnlab.user_code import user_code

__all__ = ["DataInput", "DatasetBatches", "TensorBatches", "batches_of", "describe"]

# (x, y) tensors, a Dataset of (x, y) items, or a DataLoader over one.
DataInput = Union[tuple[Tensor, Tensor], "Dataset[Any]", "DataLoader[Any]"]


class TensorBatches(BatchLoader):
    """``BatchLoader`` over the user's (x, y) tensors: x is used as given (no /255, no channel)."""

    def to_float(self, images: Tensor, augment: tuple[Tensor, Tensor] | None = None) -> Tensor:
        return images  # (bnlab's augmentation is for its own image datasets: never set here)


class DatasetBatches(BatchLoader):
    """bnlab's order and shares over a Dataset's first `size` items, collated per batch."""

    def __init__(self, dataset: Dataset[Any], size: int, batch_size: int, *,
                 loader: DataLoader[Any] | None = None, device: torch.device | str = "cpu",
                 **kw: Any) -> None:
        index = torch.arange(size)  # the order and shares are drawn over indices
        super().__init__(index, index, batch_size, **kw)
        self.dataset, self.device = dataset, torch.device(device)
        self.loader_kw: dict[str, Any] = {"collate_fn": default_collate}
        if loader is not None:
            self.loader_kw = {"collate_fn": loader.collate_fn, "num_workers": loader.num_workers,
                              "pin_memory": loader.pin_memory}

    def batches(self, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        plan = [take.tolist() for take in self.shares(epoch)]
        with user_code("your dataset"):  # __getitem__ and collate_fn are the user's code
            for i, (x, y) in enumerate(DataLoader(self.dataset, batch_sampler=plan,
                                                  **self.loader_kw)):
                for what, t in (("inputs", x), ("labels", y)):
                    if not isinstance(t, Tensor):
                        raise UserError(f"the {what} of batch {i + 1} are a {type(t).__name__}"
                                        f", not a tensor; make the dataset's items (x, y) "
                                        f"tensors (y an int class index)")
                yield x.to(self.device), y.to(self.device)


def _kind(data: Any, what: str) -> str:
    if isinstance(data, DataLoader):
        return "dataloader"
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return "tensors"
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return "dataset"
    raise UserError(f"{what}: a {type(data).__name__} is not data bnlab can train on; pass a "
                    f"tuple of tensors (x, y), a torch Dataset of (x, y) items, or a DataLoader")


def _dataset(data: Any, what: str) -> tuple[str, Any]:
    kind = _kind(data, what)
    if kind == "dataloader":
        if data.batch_size is None:
            raise UserError(f"{what}: a DataLoader with its own batch_sampler; pass its "
                            f"dataset and a batch size instead (bnlab draws the batches)")
        return kind, data.dataset
    if kind == "tensors":
        x, y = data
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise UserError(f"{what}: {x.shape[0]} inputs but {y.shape[0]} labels; pass "
                            f"tensors (x, y) with one label per input")
    elif _length(data, what) == 0:
        raise UserError(f"{what}: the dataset is empty; pass one with examples")
    return kind, data


def _length(data: Any, what: str) -> int:
    try:
        return len(data)
    except (TypeError, ValueError, OverflowError) as e:  # a negative or non-int __len__
        raise UserError(f"{what}: len() of the dataset failed ({e}); make __len__ return the "
                        f"number of examples") from e


def describe(data: Any, what: str = "data") -> dict[str, Any]:
    """Kind, class, size and one example's shape and label type (what config.json records)."""
    kind, ds = _dataset(data, what)
    if kind == "tensors":
        x, y = ds
        return {"kind": kind, "size": int(x.shape[0]), "example_shape": list(x.shape[1:]),
                "dtype": str(x.dtype).removeprefix("torch."), "label_dtype":
                    str(y.dtype).removeprefix("torch.")}
    with user_code(f"{what}[0]"):
        item = ds[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise UserError(f"{what}: item 0 is a {type(item).__name__}, not an (input, label) "
                        f"pair; make the dataset's __getitem__ return (x, y)")
    try:
        x = torch.as_tensor(item[0])
    except (TypeError, ValueError, RuntimeError) as e:  # a PIL image, a string ...
        raise UserError(f"{what}: item 0's input is a {type(item[0]).__name__}, not a tensor; "
                        f"give the dataset a transform that returns tensors") from e
    out = {"kind": kind, "class": f"{type(ds).__module__}.{type(ds).__qualname__}",
           "size": _length(ds, what), "example_shape": list(x.shape),
           "dtype": str(x.dtype).removeprefix("torch.")}
    if kind == "dataloader":
        out["batch_size"] = data.batch_size
    return out


def batches_of(data: Any, batch_size: int, *, limit: int | None = None,
               what: str = "data", **kw: Any) -> BatchLoader:
    """A BatchLoader over the first `limit` examples of `data` (kw: shuffle, seed, part, ...)."""
    kind, ds = _dataset(data, what)
    if kind == "tensors":
        x, y = ds
        return TensorBatches(x[:limit], y[:limit], batch_size, **kw)
    size = _length(ds, what) if limit is None else min(limit, _length(ds, what))
    return DatasetBatches(ds, size, batch_size, loader=data if kind == "dataloader" else None,
                          **kw)
