"""``ImageDataModule``: one LightningDataModule for cifar10, cifar100, svhn, flowers102 and folders.

Typical use::

    dm = ImageDataModule("cifar10", samples_per_class=50)    # finds cifar10.tar via VT_DRLOC_DATA
    dm.setup("fit"); dm.num_classes, dm.train_size           # 10, 500

All constructor arguments are plain types, so Hydra can build it from ``_target_`` configs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from vt_drloc.base.lightning_api import PYTORCH_LIGHTNING
from vt_drloc.data.dataset import VERIFY_MODES, ImageCache, ImageDataset, verify_samples
from vt_drloc.data.mixup import apply_mixup, build_mixup
from vt_drloc.data.sampling import per_class_counts, stratified_holdout, stratified_subset
from vt_drloc.data.sources import (
    DatasetLayoutError,
    DatasetNotFoundError,
    LoadedDataset,
    SplitData,
    download,
    load_location,
    locate,
    select_classes,
    torchvision_default_root,
)
from vt_drloc.data.specs import get_spec
from vt_drloc.data.transforms import AUGMENT_PRESETS, build_eval_transform, build_train_transform

log = logging.getLogger("vt_drloc.data")

VAL_SPLIT_CHOICES = ("auto", "val", "test", "holdout")


def plain_list(value: Any) -> Any:
    """A list-like hyper-parameter (a Hydra ``ListConfig``, a tuple) as a plain list; None and scalars as given."""
    return (
        None if value is None or isinstance(value, (str, bytes)) else [*value] if hasattr(value, "__iter__") else value
    )


class ImageDataModuleBase:
    """Image classification data with the small-data regime as one switch.

    Args:
        name: ``cifar10``, ``cifar100``, ``svhn``, ``flowers102`` or ``folder``.
        root: where the data is: a directory holding ``<name>.tar`` or ``<name>/<split>/<class>/``,
            the ``.tar`` or dataset folder itself, or a torchvision root (cifar/svhn/flowers
            formats). ``None``: the project data root (``VT_DRLOC_DATA`` /
            ``vt_drloc.base.paths.default_data_root()``), then torchvision's default
            ``$TORCH_HOME/datasets``.
        download: let ``prepare_data`` download a torchvision dataset into ``root`` (or the
            torchvision default) when it is not found. Never downloads otherwise.
        folder_name: the ``<name>`` folder / ``<name>.tar`` to use with ``name="folder"``.
        img_size: training / eval resolution; ``None`` = native (32 for CIFAR/SVHN, 224 else).
        batch_size / eval_batch_size: per-device batch sizes (eval defaults to ``batch_size``).
        num_workers: DataLoader workers; ``None`` = ``min(8, cpu_count)``.
        pin_memory: ``None`` = when CUDA is available.
        persistent_workers: keep workers alive between epochs (when ``num_workers > 0``).
        drop_last: drop the last partial training batch; ``None`` = only when each rank has at
            least one full batch (so a tiny small-data subset still trains).
        val_split: ``"auto"`` (the dataset's val split, else its test split), ``"val"``,
            ``"test"`` (validate on the test split: the paper's practice for CIFAR/SVHN, which
            have no validation split) or ``"holdout"`` (a stratified, seeded ``val_fraction`` of
            train, taken before the small-data subset).
        val_fraction / holdout_seed: size and seed of the hold-out.
        classes: train, validate and test on these classes only (names as in ``class_names``),
            relabelled 0..k-1 in the data set's order; ``None`` = all. E.g. pretrain on five
            CIFAR-10 classes, fine-tune on the other five.
        samples_per_class / train_fraction: the small-data regime (at most one): a stratified,
            seeded subset of the training split; val/test untouched.
        seed: seed of the small-data subset (same seed -> same files on every run and rank).
        augment: ``"paper"`` (DeiT recipe), ``"basic"`` or ``"none"``; see
            :mod:`vt_drloc.data.transforms`. ``auto_augment`` / ``color_jitter`` / ``re_prob``
            override the preset; ``interpolation``, ``crop_pct`` (eval) and ``scale`` (train
            RandomResizedCrop) are passed to timm.
        mean / std: per-channel normalisation; ``None`` = the dataset's own.
        mixup_alpha / cutmix_alpha / mixup_prob / mixup_switch_prob / mixup_mode /
            label_smoothing: timm ``Mixup`` on device for training batches (off when both alphas
            are 0); targets become float ``(B, num_classes)``.
        cache: keep decoded uint8 images in memory: each split is decoded once, when its
            dataloader is first requested (in the main process, so forked workers share it).
        verify: ``"header"`` (default; every file's first and last bytes, cheap: non-image, empty
            and truncated files), ``"full"`` (decode all) or ``"none"``: checked in ``setup``,
            before training. A data set without a test split is tested on its val split (logged,
            and ``subset_info["test_split"]`` says so); with neither, there is no test set.
        skip_corrupt: skip non-image / corrupt files (counted in ``skipped`` and logged) instead
            of raising an error that names the file.
    """

    def __init__(
        self,
        name: str = "cifar10",
        root: str | None = None,
        download: bool = False,
        folder_name: str | None = None,
        img_size: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        drop_last: bool | None = None,
        val_split: str = "auto",
        val_fraction: float = 0.1,
        holdout_seed: int = 0,
        samples_per_class: int | None = None,
        train_fraction: float | None = None,
        seed: int = 0,
        augment: str = "paper",
        auto_augment: str | None = None,
        color_jitter: float | None = None,
        re_prob: float | None = None,
        interpolation: str = "bicubic",
        crop_pct: float | None = None,
        scale: tuple[float, float] | list[float] = (0.08, 1.0),
        mean: list[float] | None = None,
        std: list[float] | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        mixup_mode: str = "batch",
        label_smoothing: float = 0.0,
        cache: bool = False,
        verify: str = "header",
        skip_corrupt: bool = False,
        classes: list[str] | None = None,
    ) -> None:
        super().__init__()
        # Hydra passes lists as ListConfig: plain lists in the hparams keep checkpoints loadable with
        # torch.load(weights_only=True) (save_hyperparameters reads these locals)
        classes, mean, std, scale = (plain_list(v) for v in (classes, mean, std, scale))
        self.save_hyperparameters()
        self.spec = get_spec(name)
        self.name = self.spec.name
        self.root = None if root is None else str(root)
        self.download = bool(download)
        self.folder_name = folder_name
        if self.name == "folder" and folder_name is None and root is None:
            raise ValueError(
                "name='folder' needs folder_name=<the <name>/ folder or <name>.tar> "
                "and/or root=<a directory, the dataset folder or the .tar>"
            )

        # Small-data regime.
        if samples_per_class is not None and train_fraction is not None:
            raise ValueError(
                f"give samples_per_class ({samples_per_class}) or train_fraction ({train_fraction}), not both"
            )
        if samples_per_class is not None and (
            isinstance(samples_per_class, bool) or int(samples_per_class) != samples_per_class or samples_per_class < 1
        ):
            raise ValueError(f"samples_per_class={samples_per_class!r} must be a positive integer")
        if train_fraction is not None and not 0.0 < float(train_fraction) <= 1.0:
            raise ValueError(f"train_fraction={train_fraction!r} must lie in (0, 1]")
        self.samples_per_class = None if samples_per_class is None else int(samples_per_class)
        self.train_fraction = None if train_fraction is None else float(train_fraction)
        self.seed = int(seed)

        if val_split not in VAL_SPLIT_CHOICES:
            raise ValueError(f"val_split={val_split!r} is not one of {VAL_SPLIT_CHOICES}")
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction={val_fraction!r} must lie in (0, 1)")
        self.val_split = val_split
        self.val_fraction = float(val_fraction)
        self.holdout_seed = int(holdout_seed)

        # Loaders.
        if int(batch_size) < 1 or (eval_batch_size is not None and int(eval_batch_size) < 1):
            raise ValueError(f"batch_size={batch_size!r} / eval_batch_size={eval_batch_size!r} must be >= 1")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        if num_workers is not None and int(num_workers) < 0:
            raise ValueError(f"num_workers={num_workers!r} must be >= 0")
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.drop_last = drop_last

        # Transforms.
        if augment not in AUGMENT_PRESETS:
            raise ValueError(f"augment={augment!r} is not one of {AUGMENT_PRESETS}")
        self.img_size = int(img_size) if img_size is not None else (self.spec.native_size or 224)
        if self.img_size < 1:
            raise ValueError(f"img_size={img_size!r} must be a positive integer")
        self.mean = tuple(float(v) for v in (mean if mean is not None else self.spec.mean))
        self.std = tuple(float(v) for v in (std if std is not None else self.spec.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean={list(self.mean)} / std={list(self.std)} need 3 values each, std > 0")
        self.augment = augment
        self._tf_kwargs = dict(
            auto_augment=auto_augment,
            color_jitter=color_jitter,
            re_prob=re_prob,
            interpolation=interpolation,
            scale=tuple(float(s) for s in scale),
            crop_pct=crop_pct,
        )

        # Mixup / CutMix (validated now; built once num_classes is known).
        self._mixup_kwargs = dict(
            mixup_alpha=float(mixup_alpha),
            cutmix_alpha=float(cutmix_alpha),
            prob=float(mixup_prob),
            switch_prob=float(mixup_switch_prob),
            mode=mixup_mode,
            label_smoothing=float(label_smoothing),
        )
        if classes is not None and (isinstance(classes, str) or not all(isinstance(c, str) for c in classes)):
            raise ValueError(
                f"classes={classes!r} is not a list of class names; pass e.g. classes=['cat', 'dog'] or None for all"
            )
        self.classes = None if classes is None else tuple(classes)
        known_classes = len(self.classes) if self.classes else self.spec.num_classes
        self.mixup_fn = build_mixup(known_classes or 2, **self._mixup_kwargs)
        if known_classes is None:
            self.mixup_fn = None  # rebuilt in setup with the folder's class count

        if verify not in VERIFY_MODES:
            raise ValueError(f"verify={verify!r} is not one of {VERIFY_MODES}")
        self.cache = bool(cache)
        self.verify = verify
        self.skip_corrupt = bool(skip_corrupt)

        self.data: LoadedDataset | None = None
        self.train_dataset: ImageDataset | None = None
        self.val_dataset: ImageDataset | None = None
        self.test_dataset: ImageDataset | None = None
        self.skipped: list[str] = []
        self.subset_info: dict[str, Any] = {}
        self.source: str | None = None
        self._caches: dict[tuple[int, bytes], ImageCache] = {}

    # ------------------------------------------------------------------------------------------
    # properties
    # ------------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of classes (known up front for the named datasets, after ``setup`` for folders)."""
        if self.data is not None:
            return len(self.data.classes)
        if self.classes:
            return len(self.classes)
        if self.spec.num_classes is None:
            raise RuntimeError("num_classes of a folder dataset is known after setup(); call dm.setup() first")
        return self.spec.num_classes

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (after ``setup``)."""
        self._require_setup("class_names")
        return list(self.data.classes)

    @property
    def train_size(self) -> int:
        """Number of training samples after the hold-out and the small-data subset."""
        self._require_setup("train_size")
        return len(self.train_dataset)

    @property
    def val_size(self) -> int:
        self._require_setup("val_size")
        return len(self.val_dataset)

    @property
    def test_size(self) -> int:
        self._require_setup("test_size")
        return 0 if self.test_dataset is None else len(self.test_dataset)

    @property
    def native_size(self) -> int | None:
        return self.spec.native_size

    def _require_setup(self, what: str) -> None:
        if self.train_dataset is None:
            raise RuntimeError(f"{what} is available after setup(); call dm.setup('fit') first")

    # ------------------------------------------------------------------------------------------
    # Lightning hooks
    # ------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download a missing torchvision dataset when ``download=True`` (Lightning: rank 0 only)."""
        if not self.download:
            return
        try:
            locate(self.spec, self.root, self.folder_name)
            return
        except DatasetNotFoundError:
            if self.spec.torchvision_marker is None:
                raise
        target = Path(self.root).expanduser() if self.root is not None else torchvision_default_root()
        if target.suffix.lower() == ".tar":
            raise DatasetNotFoundError(
                f"cannot download {self.name} into the archive path {target}; pass a directory as root"
            )
        log.info("downloading %s into %s", self.name, target)
        download(self.spec, target)

    def setup(self, stage: str | None = None) -> None:
        """Index the data, check it, take the hold-out and small-data subset, build datasets."""
        if self.train_dataset is not None:
            return  # all stages share one setup
        loc = locate(self.spec, self.root, self.folder_name)
        data = load_location(self.spec, loc, self.folder_name, self.skip_corrupt)
        self.source = data.description
        expected = self.spec.num_classes
        if expected is not None and len(data.classes) != expected:
            raise DatasetLayoutError(
                f"{self.name} needs {expected} classes, {data.description} has {len(data.classes)}: {data.classes[:12]}"
            )
        if self.classes is not None:
            data = select_classes(data, self.classes)
        num_classes = len(data.classes)
        skipped = list(data.skipped)

        # CIFAR / SVHN have no validation split: an archive's lone ``val`` folder is their official
        # test split (cifar10.tar names it so), and is treated as such.
        if self.spec.eval_splits == ("test",) and "val" in data.splits and "test" not in data.splits:
            data.splits["test"] = data.splits.pop("val")

        # Which split serves for validation / test.
        has_val, has_test = "val" in data.splits, "test" in data.splits
        test_name = "test" if has_test else ("val" if has_val else None)
        mode = self.val_split
        if mode == "auto":
            mode = "val" if has_val else ("test" if test_name else "holdout")
        if mode == "val" and not has_val:
            raise DatasetLayoutError(
                f"val_split='val' but {data.description} has no val split; use val_split='test' (the paper's practice) "
                "or 'holdout'"
            )
        if mode == "test" and test_name is None:
            raise DatasetLayoutError(
                f"val_split='test' but {data.description} has no val/test split; use val_split='holdout'"
            )

        # Verify files before training (train whole, so the subset does not depend on verify).
        def checked(split: SplitData) -> np.ndarray:
            keep, bad = verify_samples(split.store, np.arange(len(split)), self.verify, self.skip_corrupt)
            skipped.extend(bad)
            return keep

        train = data.splits["train"]
        train_all = checked(train)
        eval_idx: dict[str, np.ndarray] = {}
        for split_name in sorted({test_name, "val" if mode == "val" else None} - {None}):
            eval_idx[split_name] = checked(data.splits[split_name])

        holdout_idx = None
        if mode == "holdout":
            keep, held = stratified_holdout(
                train.labels[train_all], num_classes, fraction=self.val_fraction, seed=self.holdout_seed
            )
            train_all, holdout_idx = train_all[keep], train_all[held]

        available = per_class_counts(train.labels[train_all], num_classes)
        if self.samples_per_class is not None or self.train_fraction is not None:
            sub = stratified_subset(
                train.labels[train_all],
                num_classes,
                samples_per_class=self.samples_per_class,
                fraction=self.train_fraction,
                seed=self.seed,
                class_names=data.classes,
                what="train split" + (" (after the hold-out)" if holdout_idx is not None else ""),
            )
            train_idx = train_all[sub]
        else:
            train_idx = train_all
        chosen = per_class_counts(train.labels[train_idx], num_classes)

        # Transforms.
        native = self.spec.native_size
        train_tf = build_train_transform(
            self.img_size, self.mean, self.std, augment=self.augment, native_size=native, **self._tf_kwargs
        )
        eval_tf = build_eval_transform(
            self.img_size,
            self.mean,
            self.std,
            native_size=native,
            interpolation=self._tf_kwargs["interpolation"],
            crop_pct=self._tf_kwargs["crop_pct"],
        )

        def make(split_name: str, idx: np.ndarray, tf) -> ImageDataset:
            return ImageDataset(data.splits[split_name], idx, tf)

        self.train_dataset = make("train", train_idx, train_tf)
        if mode == "holdout":
            self.val_dataset = make("train", holdout_idx, eval_tf)
        else:
            val_name = "val" if mode == "val" else test_name
            self.val_dataset = make(val_name, eval_idx[val_name], eval_tf)
        self.test_dataset = make(test_name, eval_idx[test_name], eval_tf) if test_name else None
        if test_name == "val":
            log.warning(
                "%s: %s has no test split: the val split is also the test set (test/acc1 = val accuracy)",
                self.name,
                data.description,
            )
        self.data = data
        self.skipped = skipped
        if self.mixup_fn is None and self.spec.num_classes is None:
            self.mixup_fn = build_mixup(num_classes, **self._mixup_kwargs)

        self.subset_info = {
            "source": data.description,
            "num_classes": num_classes,
            "train_available": int(available.sum()),
            "train_size": len(self.train_dataset),
            "train_per_class_min": int(chosen.min()),
            "train_per_class_max": int(chosen.max()),
            "samples_per_class": self.samples_per_class,
            "train_fraction": self.train_fraction,
            "seed": self.seed,
            "val_split": mode,
            "val_size": len(self.val_dataset),
            "test_split": test_name or "none",
            "test_size": 0 if self.test_dataset is None else len(self.test_dataset),
            "skipped_files": len(skipped),
            "cache_bytes": 0,
        }
        self._report(chosen)

    def _report(self, chosen: np.ndarray) -> None:
        info = self.subset_info
        if info["samples_per_class"] is not None or info["train_fraction"] is not None:
            rule = (
                f"samples_per_class={info['samples_per_class']}"
                if info["samples_per_class"] is not None
                else f"train_fraction={info['train_fraction']}"
            )
            log.info(
                "%s: small-data regime %s, seed %d: %d of %d training images (%d-%d per class, %d classes)",
                self.name,
                rule,
                self.seed,
                info["train_size"],
                info["train_available"],
                info["train_per_class_min"],
                info["train_per_class_max"],
                info["num_classes"],
            )
        else:
            log.info("%s: %d training images, %d classes", self.name, info["train_size"], info["num_classes"])
        log.info(
            "%s: validation on %s (%d images), test on %s (%d images); from %s",
            self.name,
            info["val_split"],
            info["val_size"],
            info["test_split"],
            info["test_size"],
            info["source"],
        )
        if self.skipped:
            log.warning(
                "%s: skipped %d bad file(s):\n  %s",
                self.name,
                len(self.skipped),
                "\n  ".join(self.skipped[:20]) + ("\n  ..." if len(self.skipped) > 20 else ""),
            )
        logger = getattr(self.trainer, "logger", None) if self.trainer is not None else None
        if logger is not None:
            try:
                logger.log_hyperparams({f"data/{k}": v for k, v in info.items() if isinstance(v, (int, float, str))})
            except Exception as exc:  # a logger refusing extra hparams must not stop training
                log.debug("could not log data hparams: %s", exc)

    # ------------------------------------------------------------------------------------------
    # loaders
    # ------------------------------------------------------------------------------------------

    def _world_size(self) -> int:
        trainer = self.trainer
        return max(1, int(getattr(trainer, "world_size", 1) or 1)) if trainer is not None else 1

    def build_cache(self, dataset: ImageDataset) -> None:
        """Decode ``dataset``'s images into memory (once; shared by datasets over the same images).

        Called by the dataloader methods when ``cache=True``, so only the splits a stage uses
        are decoded, in the main process, before workers fork and share the arrays.
        """
        if dataset.cache is not None:
            return
        key = (id(dataset.split), dataset.indices.tobytes())
        cache = self._caches.get(key)
        if cache is None:
            cache = ImageCache(dataset.split.store, dataset.indices, self.skip_corrupt)
            self._caches[key] = cache
            if cache.skipped:
                self.skipped.extend(cache.skipped)
                log.warning(
                    "%s: skipped %d undecodable file(s) while caching:\n  %s",
                    self.name,
                    len(cache.skipped),
                    "\n  ".join(cache.skipped[:20]),
                )
            self.subset_info["cache_bytes"] = int(sum(c.nbytes for c in self._caches.values()))
            self.subset_info["skipped_files"] = len(self.skipped)
        dataset.set_cache(cache)

    def _loader(self, dataset: ImageDataset, batch_size: int, train: bool) -> DataLoader:
        if self.cache:
            self.build_cache(dataset)
        drop_last = False
        if train:
            per_rank = len(dataset) // self._world_size()
            drop_last = per_rank >= batch_size if self.drop_last is None else bool(self.drop_last)
            if drop_last and per_rank < batch_size:
                raise ValueError(
                    f"drop_last=True with {per_rank} training images per rank and "
                    f"batch_size={batch_size} leaves no batch; lower batch_size or "
                    "set drop_last=False"
                )
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            num_workers=workers,
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            persistent_workers=self.persistent_workers and workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self._require_setup("train_dataloader")
        return self._loader(self.train_dataset, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        self._require_setup("val_dataloader")
        return self._loader(self.val_dataset, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        self._require_setup("test_dataloader")
        if self.test_dataset is None:
            raise RuntimeError(f"{self.source} has no val/test split to test on")
        return self._loader(self.test_dataset, self.eval_batch_size, train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Mixup / CutMix training batches on device (only while the trainer is training)."""
        trainer = self.trainer
        if self.mixup_fn is not None and trainer is not None and trainer.training:
            return apply_mixup(batch, self.mixup_fn)
        return batch

    def mix(self, batch: Any) -> Any:
        """Apply this datamodule's Mixup / CutMix to a batch, regardless of the trainer state."""
        return apply_mixup(batch, self.mixup_fn)


class ImageDataModule(ImageDataModuleBase, PYTORCH_LIGHTNING.LightningDataModule):
    __doc__ = ImageDataModuleBase.__doc__
