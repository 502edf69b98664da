"""ImageDataModule on the real, offline archives ``cifar10.tar`` and ``flowers102.tar``."""

from __future__ import annotations

import io
import itertools
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vt_drloc.data import ImageDataModule, TarStore, read_tar_index
from vt_drloc.data.specs import SPECS

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _per_class(ds) -> Counter:
    return Counter(int(v) for v in ds.labels)


@pytest.fixture(scope="module")
def cifar_full(cifar10_tar: Path) -> ImageDataModule:
    dm = ImageDataModule("cifar10", root=str(cifar10_tar.parent), batch_size=4, num_workers=0)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def flowers_full(flowers102_tar: Path) -> ImageDataModule:
    dm = ImageDataModule("flowers102", root=str(flowers102_tar), batch_size=4, num_workers=0)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def flowers_extracted(flowers102_tar: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flowers_extracted")
    with tarfile.open(flowers102_tar) as tf:
        tf.extractall(out, filter="data")
    return out


# ---------------------------------------------------------------------------------------------
# counts and class order
# ---------------------------------------------------------------------------------------------


def test_cifar10_counts_and_class_order(cifar_full: ImageDataModule) -> None:
    dm = cifar_full
    assert dm.num_classes == 10
    assert dm.class_names == CIFAR10_CLASSES
    assert dm.train_size == 50_000
    assert dm.test_size == 10_000
    # CIFAR has no validation split: by default the test split (the archive's val/) validates.
    assert dm.subset_info["val_split"] == "test"
    assert dm.val_size == 10_000
    assert _per_class(dm.train_dataset) == {c: 5000 for c in range(10)}
    assert _per_class(dm.test_dataset) == {c: 1000 for c in range(10)}
    # Every label is the rank of its class folder in the standard order.
    for ds in (dm.train_dataset, dm.test_dataset):
        keys = ds.keys()
        assert all(CIFAR10_CLASSES[lab] == k.split("/")[1] for k, lab in zip(keys, ds.labels))
    assert dm.test_dataset.keys()[0] == "val/airplane/0000.jpg"  # the official test split


def test_flowers102_counts_and_official_order(flowers_full: ImageDataModule) -> None:
    dm = flowers_full
    assert dm.num_classes == 102
    assert (dm.train_size, dm.val_size, dm.test_size) == (1020, 1020, 6149)
    assert dm.subset_info["val_split"] == "val"
    assert dm.class_names[0] == "000_pink_primrose"
    assert dm.class_names[101] == "101_blackberry_lily"
    assert _per_class(dm.train_dataset) == {c: 10 for c in range(102)}
    assert _per_class(dm.val_dataset) == {c: 10 for c in range(102)}
    test_counts = _per_class(dm.test_dataset)
    assert len(test_counts) == 102
    assert min(test_counts.values()) == 20 and max(test_counts.values()) == 238
    # Label = official label - 1 = the folder's number.
    for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        for key, lab in zip(ds.keys(), ds.labels):
            assert int(key.split("/")[1][:3]) == lab


def test_tar_index_matches_tarfile(flowers102_tar: Path) -> None:
    index = read_tar_index(flowers102_tar)
    with tarfile.open(flowers102_tar) as tf:
        members = [m for m in tf if m.isfile()]
    assert list(index.names) == [m.name for m in members]
    assert index.offsets.tolist() == [m.offset_data for m in members]
    assert index.sizes.tolist() == [m.size for m in members]


def test_archive_and_extracted_folder_give_identical_samples(
    flowers102_tar: Path, flowers_extracted: Path, flowers_full: ImageDataModule
) -> None:
    folder = ImageDataModule("flowers102", root=str(flowers_extracted), batch_size=4, num_workers=0, augment="none")
    folder.setup("fit")
    assert folder.source.startswith("folder")
    assert flowers_full.source.startswith("tar archive")
    assert folder.class_names == flowers_full.class_names
    for a, b in (
        (folder.train_dataset, flowers_full.train_dataset),
        (folder.val_dataset, flowers_full.val_dataset),
        (folder.test_dataset, flowers_full.test_dataset),
    ):
        assert a.keys() == b.keys()
        assert np.array_equal(a.labels, b.labels)
    # Same bytes, same pixels for a spread of samples.
    ta, tb = folder.test_dataset, flowers_full.test_dataset
    for k in (0, 1234, len(ta) - 1):
        ia, ib = ta.split.store.read_bytes(int(ta.indices[k])), tb.split.store.read_bytes(int(tb.indices[k]))
        assert ia == ib and len(ia) > 1000
        assert np.array_equal(np.asarray(ta.load_image(k)), np.asarray(tb.load_image(k)))
    # The small-data subset is the same, too.
    sub_tar = ImageDataModule("flowers102", root=str(flowers102_tar), samples_per_class=3, seed=5, num_workers=0)
    sub_dir = ImageDataModule(
        "flowers102", root=str(flowers_extracted / "flowers102"), samples_per_class=3, seed=5, num_workers=0
    )
    sub_tar.setup()
    sub_dir.setup()
    assert sub_tar.train_size == 306
    assert sub_tar.train_dataset.keys() == sub_dir.train_dataset.keys()


# ---------------------------------------------------------------------------------------------
# small-data regime
# ---------------------------------------------------------------------------------------------


def test_cifar10_samples_per_class_is_stratified_and_deterministic(cifar10_tar: Path, caplog) -> None:
    def keys(seed: int) -> list[str]:
        dm = ImageDataModule("cifar10", root=str(cifar10_tar), samples_per_class=25, seed=seed, num_workers=0)
        with caplog.at_level("INFO", logger="vt_drloc.data"):
            dm.setup("fit")
        assert dm.train_size == 250
        assert _per_class(dm.train_dataset) == {c: 25 for c in range(10)}
        assert dm.val_size == 10_000 and dm.test_size == 10_000  # untouched
        return dm.train_dataset.keys()

    a, b, c = keys(0), keys(0), keys(1)
    assert a == b
    assert a != c
    assert len(set(a) & set(c)) < 50  # different seed: mostly different files
    assert "samples_per_class=25" in caplog.text and "250 of 50000 training images" in caplog.text


def test_train_fraction(cifar10_tar: Path, flowers102_tar: Path) -> None:
    dm = ImageDataModule("cifar10", root=str(cifar10_tar), train_fraction=0.01, seed=3, num_workers=0)
    dm.setup()
    assert dm.train_size == 500
    assert _per_class(dm.train_dataset) == {c: 50 for c in range(10)}
    assert dm.subset_info["train_available"] == 50_000
    fl = ImageDataModule("flowers102", root=str(flowers102_tar), train_fraction=0.5, num_workers=0)
    fl.setup()
    assert fl.train_size == 510 and fl.val_size == 1020 and fl.test_size == 6149


def test_holdout_validation(cifar10_tar: Path) -> None:
    dm = ImageDataModule("cifar10", root=str(cifar10_tar), val_split="holdout", val_fraction=0.1, num_workers=0)
    dm.setup()
    assert dm.val_size == 5000 and dm.train_size == 45_000 and dm.test_size == 10_000
    assert _per_class(dm.val_dataset) == {c: 500 for c in range(10)}
    assert not set(dm.val_dataset.keys()) & set(dm.train_dataset.keys())
    assert all(k.startswith("train/") for k in dm.val_dataset.keys())
    # The hold-out does not move with the subset seed; the subset never overlaps it.
    small = ImageDataModule(
        "cifar10", root=str(cifar10_tar), val_split="holdout", samples_per_class=10, seed=7, num_workers=0
    )
    small.setup()
    assert small.val_dataset.keys() == dm.val_dataset.keys()
    assert small.train_size == 100
    assert not set(small.train_dataset.keys()) & set(dm.val_dataset.keys())


def test_val_split_test_on_flowers(flowers102_tar: Path) -> None:
    dm = ImageDataModule("flowers102", root=str(flowers102_tar), val_split="test", num_workers=0)
    dm.setup()
    assert dm.val_size == 6149 and dm.val_dataset.keys() == dm.test_dataset.keys()


# ---------------------------------------------------------------------------------------------
# transforms, cache, workers
# ---------------------------------------------------------------------------------------------


def test_cifar_shapes_and_value_ranges(cifar10_tar: Path) -> None:
    dm = ImageDataModule(
        "cifar10", root=str(cifar10_tar), samples_per_class=2, batch_size=8, re_prob=0.0, num_workers=0
    )
    dm.setup()
    mean, std = torch.tensor(SPECS["cifar10"].mean), torch.tensor(SPECS["cifar10"].std)
    lo, hi = ((0 - mean) / std).view(1, 3, 1, 1), ((1 - mean) / std).view(1, 3, 1, 1)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (8,) and y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) <= 9
    assert bool((x >= lo - 1e-5).all()) and bool((x <= hi + 1e-5).all())
    # Eval at native 32 px: no resize, exactly ToTensor + per-dataset Normalize.
    xv, _ = dm.val_dataset[0]
    raw = torch.from_numpy(np.array(dm.val_dataset.load_image(0))).permute(2, 0, 1).float() / 255
    assert torch.allclose(xv, (raw - mean.view(3, 1, 1)) / std.view(3, 1, 1), atol=1e-6)


def test_upsampled_224_and_flowers_shapes(cifar10_tar: Path, flowers102_tar: Path) -> None:
    dm = ImageDataModule(
        "cifar10", root=str(cifar10_tar), samples_per_class=1, img_size=224, batch_size=2, num_workers=0
    )
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 224, 224)
    assert dm.val_dataset[0][0].shape == (3, 224, 224)
    fl = ImageDataModule("flowers102", root=str(flowers102_tar), samples_per_class=1, batch_size=2, num_workers=0)
    fl.setup()
    assert fl.img_size == 224
    x, y = next(iter(fl.train_dataloader()))
    assert x.shape == (2, 3, 224, 224) and torch.isfinite(x).all()
    xt, yt = fl.test_dataset[0]
    assert xt.shape == (3, 224, 224) and yt == 0
    assert float(xt.std()) > 0.1  # a real photo, not a blank


def test_cache_holds_decoded_uint8_and_matches_store(cifar10_tar: Path, flowers102_tar: Path) -> None:
    kw = dict(samples_per_class=20, augment="none", num_workers=0, val_split="holdout", val_fraction=0.001)
    plain = ImageDataModule("cifar10", root=str(cifar10_tar), **kw)
    cached = ImageDataModule("cifar10", root=str(cifar10_tar), cache=True, **kw)
    plain.setup()
    cached.setup()
    assert cached.train_dataset.cache is None  # decoded when the loader is first requested
    cached.train_dataloader()
    images = cached.train_dataset.cache.images
    assert isinstance(images, np.ndarray) and images.shape == (200, 32, 32, 3) and images.dtype == np.uint8
    assert cached.subset_info["cache_bytes"] >= 200 * 32 * 32 * 3
    assert cached.train_dataset.keys() == plain.train_dataset.keys()
    for k in (0, 77, 199):
        assert torch.equal(cached.train_dataset[k][0], plain.train_dataset[k][0])
    # Flowers: images differ in size, so the cache is a list of arrays.
    fl = ImageDataModule(
        "flowers102", root=str(flowers102_tar), samples_per_class=1, cache=True, val_split="test", num_workers=0
    )
    fl.setup()
    fl.train_dataloader()
    assert fl.test_dataset.cache is None  # only the requested split is decoded
    imgs = fl.train_dataset.cache.images
    assert len(imgs) == 102 and all(a.dtype == np.uint8 and a.ndim == 3 and min(a.shape[:2]) == 128 for a in imgs)


def test_workers_read_tar_with_own_handles(cifar10_tar: Path) -> None:
    kw = dict(samples_per_class=3, batch_size=10, num_workers=0, persistent_workers=False)
    dm0 = ImageDataModule("cifar10", root=str(cifar10_tar), **kw)
    dm0.setup()
    kw["num_workers"] = 2
    dm2 = ImageDataModule("cifar10", root=str(cifar10_tar), **kw)
    dm2.setup()
    assert isinstance(dm2.test_dataset.split.store, TarStore)
    a = torch.cat([x for x, _ in itertools.islice(dm0.test_dataloader(), 3)])
    b = torch.cat([x for x, _ in itertools.islice(dm2.test_dataloader(), 3)])
    assert a.shape == (30, 3, 32, 32) and torch.equal(a, b)


def test_tar_store_reopens_after_fork_and_pickle(cifar10_tar: Path) -> None:
    import os
    import pickle

    dm = ImageDataModule("cifar10", root=str(cifar10_tar), samples_per_class=1, num_workers=0)
    dm.setup()
    store = dm.train_dataset.split.store
    first = store.read_bytes(0)
    assert store._fd_pid == os.getpid()
    clone = pickle.loads(pickle.dumps(store))  # what a spawned worker receives
    assert clone._fd is None  # no inherited handle: opened lazily in the new process
    assert clone.read_bytes(0) == first and clone._fd_pid == os.getpid()
    store._fd_pid = -1  # as seen from a forked child: the parent's handle is not reused
    assert store.read_bytes(0) == first and store._fd_pid == os.getpid()
    assert Image.open(io.BytesIO(first)).size == (32, 32)
