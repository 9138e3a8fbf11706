"""The datasets bnlab knows: files, official checksums, mirrors and where copies usually live.

One table, name -> DatasetSpec. ``gz_md5`` is the checksum of the official compressed file (what
a mirror serves); ``raw_md5`` is the checksum of the decompressed IDX content, which identifies
the data whatever compressed it (distribution packages recompress). ``None`` = not known here.

Two layouts: ``"idx"`` (four IDX files, (Fashion-)MNIST) and ``"cifar"`` (CIFAR-10's python
batches, ``bnlab.data.cifar``): the mirrors serve one archive, ``files["archive"]``; a copy is
that archive or the seven files extracted from it (MD5s as torchvision records them).
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
    torchvision_folder: str  # <root>/<folder>/raw in torchvision's layout (CIFAR: no /raw)
    image_size: tuple[int, int] = (28, 28)  # (H, W) of every image
    channels: int = 1
    layout: str = "idx"  # or "cifar", or "synthetic" (generated in memory: bnlab.data.synthetic)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image, as a model reads it."""
        return (self.channels, *self.image_size)

    @property
    def torchvision_subdir(self) -> str:
        """Where torchvision keeps the files under its root."""
        return self.torchvision_folder + ("" if self.layout == "cifar" else "/raw")

    def describe_files(self) -> str:
        """The files a complete copy holds, for error messages."""
        if self.layout == "cifar":
            return (f"{self.files['archive'].name}, or its {self.torchvision_folder}/ folder "
                    f"of {len(self.files) - 1} files")
        return ", ".join(fs.name + "[.gz]" for fs in self.files.values())


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
    "cifar10": DatasetSpec(
        name="cifar10",
        title="CIFAR-10 (Krizhevsky)",
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"),
        files={
            "archive": FileSpec("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                                None),
            **{name: FileSpec(name, "", md5) for name, md5 in (
                ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
                ("test_batch", "40351d587109b95175f43aff81a1287e"),
                ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"))},
        },
        sizes={"train": 50000, "test": 10000},
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        system_dirs=(),
        torchvision_folder="cifar-10-batches-py",
        image_size=(32, 32),
        channels=3,
        layout="cifar",
    ),
}


def _synthetic(real: DatasetSpec, train: int, test: int) -> DatasetSpec:
    """The synthetic stand-in for `real` (bnlab.data.synthetic): its shapes and classes."""
    return DatasetSpec(name=f"fake-{real.name}", title=f"{real.title.split(' (')[0]} "
                       f"(synthetic: bnlab's generated stand-in, not the real data)",
                       classes=real.classes, files={}, sizes={"train": train, "test": test},
                       mirrors=(), system_dirs=(), torchvision_folder="",
                       image_size=real.image_size, channels=real.channels, layout="synthetic")


# Sizes: small enough to generate in well under a second, large enough to learn from.
for _real, _train, _test in (("fashion-mnist", 6000, 1000), ("cifar10", 5000, 1000)):
    DATASETS[f"fake-{_real}"] = _synthetic(DATASETS[_real], _train, _test)


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; bnlab knows {', '.join(sorted(DATASETS))}"
        ) from None
