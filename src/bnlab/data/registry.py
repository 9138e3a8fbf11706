"""The datasets bnlab knows: files, official checksums, mirrors and where copies usually live.

One table, name -> DatasetSpec. ``gz_md5`` is the checksum of the official compressed file (what
a mirror serves); ``raw_md5`` is the checksum of the decompressed IDX content, which identifies
the data whatever compressed it (distribution packages recompress). ``None`` = not known here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DATASETS", "SPLITS", "DatasetSpec", "FileSpec", "get_spec"]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class FileSpec:
    name: str  # without .gz, e.g. "train-images-idx3-ubyte"
    gz_md5: str
    raw_md5: str | None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    classes: tuple[str, ...]
    files: dict[str, FileSpec]  # "train-images", "train-labels", "test-images", "test-labels"
    sizes: dict[str, int]  # split -> number of examples
    mirrors: tuple[str, ...]  # base URLs, tried in order
    system_dirs: tuple[str, ...]  # distribution packages (Debian: dataset-fashion-mnist)
    torchvision_folder: str  # <root>/<folder>/raw in torchvision's layout
    image_size: tuple[int, int] = (28, 28)  # (H, W) of every image


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST (Zalando)",
        classes=("t-shirt", "trouser", "pullover", "dress", "coat",
                 "sandal", "shirt", "sneaker", "bag", "ankle boot"),
        files={
            "train-images": FileSpec("train-images-idx3-ubyte",
                                     "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                     "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            "train-labels": FileSpec("train-labels-idx1-ubyte",
                                     "25c81989df183df01b3e8a0aad5dffbe",
                                     "9018921c3c673c538a1fc5bad174d6f9"),
            "test-images": FileSpec("t10k-images-idx3-ubyte",
                                    "bef4ecab320f06d8554ea6380940ec79",
                                    "8181f5470baa50b63fa0f6fddb340f0a"),
            "test-labels": FileSpec("t10k-labels-idx1-ubyte",
                                    "bb300cfdad3c16e7a12a480ee83cd310",
                                    "15d484375f8d13e6eb1aabb0c3f46965"),
        },
        sizes={"train": 60000, "test": 10000},
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        torchvision_folder="FashionMNIST",
    ),
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST handwritten digits",
        classes=tuple(str(d) for d in range(10)),
        files={
            "train-images": FileSpec("train-images-idx3-ubyte",
                                     "f68b3c2dcbeaaa9fbdd348bbdeb94873", None),
            "train-labels": FileSpec("train-labels-idx1-ubyte",
                                     "d53e105ee54ea40749a09fcbcd1e9432", None),
            "test-images": FileSpec("t10k-images-idx3-ubyte",
                                    "9fb629c4189551a2d022fa330f9573f3", None),
            "test-labels": FileSpec("t10k-labels-idx1-ubyte",
                                    "ec29112dd5afa0611ce80d1b7f02629c", None),
        },
        sizes={"train": 60000, "test": 10000},
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        system_dirs=("/usr/share/datasets/mnist",),
        torchvision_folder="MNIST",
    ),
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; bnlab knows {', '.join(sorted(DATASETS))}"
        ) from None
