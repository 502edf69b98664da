"""Per-dataset settings: class count, normalisation, native size, splits and download sources."""

from __future__ import annotations

from dataclasses import dataclass, field

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one dataset.

    ``num_classes`` / ``native_size`` are ``None`` for ``folder`` (read from the data).
    ``eval_splits`` lists the evaluation splits the dataset ships with; CIFAR and SVHN have a
    test split only, so their validation set is either the test split (the paper's practice) or a
    hold-out from train.
    """

    name: str
    num_classes: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    native_size: int | None
    eval_splits: tuple[str, ...]
    # torchvision on-disk format: what to look for under a torchvision root, for error messages.
    torchvision_marker: str | None = None
    download_hint: str = ""
    aliases: tuple[str, ...] = field(default=())


SPECS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        name="cifar10",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        native_size=32,
        eval_splits=("test",),
        torchvision_marker="cifar-10-batches-py/",
        download_hint="pass download=True (torchvision's CIFAR10 download, 163 MiB)",
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        native_size=32,
        eval_splits=("test",),
        torchvision_marker="cifar-100-python/",
        download_hint="pass download=True (torchvision's CIFAR100 download, 161 MiB)",
    ),
    "svhn": DatasetSpec(
        name="svhn",
        num_classes=10,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        native_size=32,
        eval_splits=("test",),
        torchvision_marker="train_32x32.mat + test_32x32.mat",
        download_hint="pass download=True (torchvision's SVHN .mat files, 246 MiB)",
    ),
    "flowers102": DatasetSpec(
        name="flowers102",
        num_classes=102,
        # Natural photographs: the ImageNet statistics are the usual choice (timm / DeiT).
        mean=tuple(IMAGENET_DEFAULT_MEAN),
        std=tuple(IMAGENET_DEFAULT_STD),
        native_size=224,
        eval_splits=("val", "test"),
        torchvision_marker="flowers-102/ (jpg/, imagelabels.mat, setid.mat)",
        download_hint="pass download=True (torchvision's Flowers102 download, 330 MiB)",
    ),
    "folder": DatasetSpec(
        name="folder",
        num_classes=None,
        mean=tuple(IMAGENET_DEFAULT_MEAN),
        std=tuple(IMAGENET_DEFAULT_STD),
        native_size=None,
        eval_splits=("val", "test"),
        torchvision_marker=None,
        download_hint="folder datasets cannot be downloaded; point root at your data",
    ),
}

KNOWN_DATASETS: tuple[str, ...] = tuple(SPECS)

# Download sources (URL, file name, md5), the same as torchvision's, so ``prepare_data`` can fetch
# SVHN and Flowers-102 without torchvision's scipy-dependent dataset classes.
SVHN_FILES = {
    "train": (
        "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
        "train_32x32.mat",
        "e26dedcc434d2e4c54c9b2d4a06d8373",
    ),
    "test": (
        "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
        "test_32x32.mat",
        "eb5a983be6a315427106f1b164d9cef3",
    ),
}
FLOWERS_URL_PREFIX = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
FLOWERS_FILES = {
    "image": ("102flowers.tgz", "52808999861908f626f3c1f4e79d11fa"),
    "label": ("imagelabels.mat", "e0620be6f572b9609742df49c70aed4d"),
    "setid": ("setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c"),
}


def get_spec(name: str) -> DatasetSpec:
    """The spec of ``name``; a ``ValueError`` listing the known names otherwise."""
    key = str(name).lower()
    if key not in SPECS:
        raise ValueError(
            f"Unknown dataset name {name!r}. Known datasets: {', '.join(KNOWN_DATASETS)} "
            "(use name='folder' with folder_name=... for any <root>/<name>/<split>/<class>/ data)."
        )
    return SPECS[key]
