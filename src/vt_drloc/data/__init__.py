"""Data layer: LightningDataModules for cifar10, cifar100, svhn, flowers102 and image folders.

The small-data regime of the paper is one switch (``samples_per_class`` or ``train_fraction``).
See :class:`ImageDataModule`.
"""

from vt_drloc.data.datamodule import VAL_SPLIT_CHOICES, ImageDataModule
from vt_drloc.data.dataset import ImageCache, ImageDataset, verify_samples
from vt_drloc.data.mixup import apply_mixup, build_mixup
from vt_drloc.data.sampling import stratified_holdout, stratified_subset
from vt_drloc.data.sources import (
    DatasetLayoutError,
    DatasetNotFoundError,
    LoadedDataset,
    SplitData,
    load_location,
    locate,
    torchvision_default_root,
)
from vt_drloc.data.specs import KNOWN_DATASETS, SPECS, DatasetSpec, get_spec
from vt_drloc.data.tar_folder import (
    CorruptArchiveError,
    CorruptImageError,
    TarStore,
    check_archive_sha256,
    read_tar_index,
)
from vt_drloc.data.transforms import AUGMENT_PRESETS, build_eval_transform, build_train_transform

__all__ = [
    "AUGMENT_PRESETS",
    "KNOWN_DATASETS",
    "SPECS",
    "VAL_SPLIT_CHOICES",
    "CorruptArchiveError",
    "CorruptImageError",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "ImageCache",
    "ImageDataModule",
    "ImageDataset",
    "LoadedDataset",
    "SplitData",
    "TarStore",
    "apply_mixup",
    "build_eval_transform",
    "build_mixup",
    "build_train_transform",
    "check_archive_sha256",
    "get_spec",
    "load_location",
    "locate",
    "read_tar_index",
    "stratified_holdout",
    "stratified_subset",
    "torchvision_default_root",
    "verify_samples",
]
