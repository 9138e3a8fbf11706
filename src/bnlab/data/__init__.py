"""bnlab.data: the IDX format, the dataset registry and its sources, and the in-memory loader."""

from bnlab.data.dataset import Split, load_split, locate
from bnlab.data.download import DownloadError, fetch
from bnlab.data.idx import IdxError, read_idx, write_idx
from bnlab.data.loader import BatchLoader
from bnlab.data.registry import DATASETS, get_spec

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DownloadError",
    "IdxError",
    "Split",
    "fetch",
    "get_spec",
    "load_split",
    "locate",
    "read_idx",
    "write_idx",
]
