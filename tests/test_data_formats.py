"""torchvision on-disk formats (CIFAR-10/100 pickles, SVHN .mat, Flowers-102) via small fixtures
written by the tests, and user folders / tar archives of ``<name>/<split>/<class>/<image>``."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from image_folders import make_image_folder
from PIL import Image

from vt_drloc.data import ImageDataModule, read_tar_index
from vt_drloc.data.sampling import stratified_holdout, stratified_subset
from vt_drloc.data.sources import DatasetLayoutError, load_mat


def _rng_images(n: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _write_cifar_pickle(path: Path, images: np.ndarray, labels: list[int], label_key: str) -> None:
    # The real files: Python-2 pickles of dicts whose 'data' rows are R(1024) G(1024) B(1024).
    entry = {
        "batch_label": "testing batch",
        label_key: labels,
        "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
        "filenames": [f"img_{i}.png" for i in range(len(images))],
    }
    if label_key == "fine_labels":
        entry["coarse_labels"] = [lab // 5 for lab in labels]
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def make_toy_folder(
    root: Path,
    name: str = "toy",
    classes=("cat", "dog", "emu"),
    per_class=None,
    splits=("train", "val", "test"),
    size: int = 12,
) -> Path:
    """``root/name/<split>/<class>/<i>.png`` with distinct solid-colour images of distinct sizes."""
    per_class = per_class or {"train": 6, "val": 2, "test": 3}
    return make_image_folder(root, name, classes, per_class, splits, size=size, ext="png", vary_height=True)


def tar_folder(folder: Path, out: Path, fmt=tarfile.USTAR_FORMAT, arcroot: str | None = None) -> Path:
    with tarfile.open(out, "w", format=fmt) as tf:
        tf.add(folder, arcname=arcroot if arcroot is not None else folder.name)
    return out


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickles)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def cifar100_root(tmp_path: Path) -> tuple[Path, np.ndarray, list[int]]:
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    train_labels = [c for c in range(100) for _ in range(4)]
    train = _rng_images(400, seed=1)
    _write_cifar_pickle(base / "train", train, train_labels, "fine_labels")
    _write_cifar_pickle(
        base / "test", _rng_images(200, seed=2), [c for c in range(100) for _ in range(2)], "fine_labels"
    )
    names = [f"class_{i:02d}" for i in range(100)]
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]}, f, protocol=2)
    return tmp_path, train, train_labels


def test_cifar100_torchvision_format(cifar100_root, monkeypatch) -> None:
    root, train, train_labels = cifar100_root
    dm = ImageDataModule("cifar100", root=str(root), samples_per_class=3, seed=0, batch_size=4, num_workers=0)
    dm.setup()
    assert dm.num_classes == 100 and dm.class_names[7] == "class_07"
    assert dm.source.startswith("torchvision cifar-100-python/")
    assert dm.train_size == 300 and dm.test_size == 200 and dm.val_size == 200
    ds = dm.train_dataset
    for k in (0, 150, 299):
        i = int(ds.indices[k])
        assert np.array_equal(np.asarray(ds.load_image(k)), train[i])
        assert ds.labels[k] == train_labels[i]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
    # Cross-check against torchvision's own reader (its md5 check cannot pass on a fixture).
    from torchvision.datasets import CIFAR100

    monkeypatch.setattr(CIFAR100, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    tv = CIFAR100(str(root), train=True, download=False)
    assert np.array_equal(tv.data, train) and tv.targets == train_labels and tv.classes == dm.class_names


def test_cifar10_torchvision_format(tmp_path: Path, monkeypatch) -> None:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    batches = []
    for b in range(1, 6):
        imgs = _rng_images(20, seed=b)
        labels = [(i + b) % 10 for i in range(20)]
        _write_cifar_pickle(base / f"data_batch_{b}", imgs, labels, "labels")
        batches.append((imgs, labels))
    test_imgs = _rng_images(10, seed=9)
    _write_cifar_pickle(base / "test_batch", test_imgs, list(range(10)), "labels")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 20}, f, protocol=2)

    dm = ImageDataModule("cifar10", root=str(tmp_path), num_workers=0, augment="none")
    dm.setup()
    assert dm.class_names == names
    assert dm.train_size == 100 and dm.test_size == 10
    all_train = np.concatenate([b[0] for b in batches])
    assert np.array_equal(np.asarray(dm.train_dataset.load_image(42)), all_train[42])
    assert np.array_equal(np.asarray(dm.test_dataset.load_image(3)), test_imgs[3])
    assert dm.test_dataset.labels.tolist() == list(range(10))

    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    tv = CIFAR10(str(tmp_path), train=True, download=False)
    assert np.array_equal(tv.data, all_train) and list(dm.train_dataset.labels) == tv.targets


# ---------------------------------------------------------------------------------------------
# SVHN (.mat)
# ---------------------------------------------------------------------------------------------


def test_svhn_mat_format(tmp_path: Path) -> None:
    expected = {}
    for split, n, seed in (("train", 60, 3), ("test", 30, 4)):
        imgs = _rng_images(n, seed)
        digits = np.arange(n) % 10
        # SVHN stores X as (32, 32, 3, N) and the digit 0 as label 10, in an (N, 1) double array.
        y = np.where(digits == 0, 10, digits).astype(np.float64).reshape(n, 1)
        save_mat(tmp_path / f"{split}_32x32.mat", {"X": imgs.transpose(1, 2, 3, 0), "y": y})
        expected[split] = (imgs, digits)
    dm = ImageDataModule("svhn", root=str(tmp_path), samples_per_class=4, batch_size=8, num_workers=0, augment="none")
    dm.setup()
    assert dm.class_names == [str(i) for i in range(10)]
    assert dm.source.startswith("torchvision SVHN")
    assert dm.train_size == 40 and dm.test_size == 30 and dm.subset_info["val_split"] == "test"
    imgs, digits = expected["train"]
    for k in range(0, 40, 7):
        i = int(dm.train_dataset.indices[k])
        assert dm.train_dataset.labels[k] == digits[i]
        assert np.array_equal(np.asarray(dm.train_dataset.load_image(k)), imgs[i])
    assert sorted(set(dm.test_dataset.labels.tolist())) == list(range(10))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32)


def save_mat(path: Path, arrays: dict) -> None:
    scipy.io.savemat(path, arrays, do_compression=True)


def test_unreadable_mat_files_are_layout_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.mat").write_bytes(b"not a mat file" * 20)
    with pytest.raises(DatasetLayoutError, match="bad.mat cannot be read as a MATLAB .mat file"):
        load_mat(tmp_path / "bad.mat")
    (tmp_path / "v73.mat").write_bytes(b"MATLAB 7.3 MAT-file".ljust(600, b" "))
    with pytest.raises(DatasetLayoutError, match="v73.mat cannot be read"):
        load_mat(tmp_path / "v73.mat")


# ---------------------------------------------------------------------------------------------
# Flowers-102 (torchvision: flowers-102/jpg + imagelabels.mat + setid.mat)
# ---------------------------------------------------------------------------------------------


def test_flowers102_torchvision_format(tmp_path: Path) -> None:
    base = tmp_path / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    n = 102 * 3
    labels = np.array([1 + (i % 102) for i in range(n)], dtype=np.float64)  # 1-based, image i+1
    for i in range(n):
        Image.new("RGB", (9, 7), (i % 256, (i * 7) % 256, 5)).save(base / "jpg" / f"image_{i + 1:05d}.jpg")
    ids = np.arange(1, n + 1)
    setid = {
        "trnid": ids[0::3].reshape(1, -1).astype(np.float64),
        "valid": ids[1::3].reshape(1, -1).astype(np.float64),
        "tstid": ids[2::3].reshape(1, -1).astype(np.float64),
    }
    save_mat(base / "setid.mat", setid)
    save_mat(base / "imagelabels.mat", {"labels": labels.reshape(1, -1)})

    dm = ImageDataModule("flowers102", root=str(tmp_path), img_size=16, batch_size=4, num_workers=0)
    dm.setup()
    assert (dm.train_size, dm.val_size, dm.test_size) == (102, 102, 102)
    assert dm.class_names[0] == "pink primrose"  # torchvision's class names
    for ds, ids_ in ((dm.train_dataset, setid["trnid"]), (dm.test_dataset, setid["tstid"])):
        keys = ds.keys()
        assert keys == [f"image_{int(i):05d}.jpg" for i in ids_.ravel()]
        assert ds.labels.tolist() == [int(labels[int(i) - 1]) - 1 for i in ids_.ravel()]
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16)


# ---------------------------------------------------------------------------------------------
# user folders and tars
# ---------------------------------------------------------------------------------------------


def test_folder_dataset_dir_tar_and_root_forms(tmp_path: Path) -> None:
    folder = make_toy_folder(tmp_path / "data")
    dm = ImageDataModule(
        "folder", root=str(tmp_path / "data"), folder_name="toy", img_size=16, batch_size=4, num_workers=0
    )
    with pytest.raises(RuntimeError, match="after setup"):
        _ = dm.num_classes
    dm.setup()
    assert dm.num_classes == 3 and dm.class_names == ["cat", "dog", "emu"]
    assert (dm.train_size, dm.val_size, dm.test_size) == (18, 6, 9)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16)
    reference = dm.train_dataset.keys()
    # The same data as <name>.tar beside it, as the .tar itself, as a pax archive, and as the
    # dataset folder itself: identical samples.
    (tmp_path / "tars").mkdir()
    tar_folder(folder, tmp_path / "tars" / "toy.tar")
    pax = tar_folder(folder, tmp_path / "pax.tar", fmt=tarfile.PAX_FORMAT, arcroot="toy")
    bare = tar_folder(folder, tmp_path / "bare.tar", arcroot="")
    variants = [
        dict(root=str(tmp_path / "tars"), folder_name="toy"),
        dict(root=str(tmp_path / "tars" / "toy.tar")),
        dict(root=str(pax)),
        dict(root=str(bare)),
        dict(root=str(folder)),
    ]
    for kw in variants:
        other = ImageDataModule("folder", img_size=16, num_workers=0, **kw)
        other.setup()
        assert other.train_dataset.keys() == reference, kw
        assert np.array_equal(other.train_dataset.labels, dm.train_dataset.labels)
        assert np.array_equal(np.asarray(other.test_dataset.load_image(4)), np.asarray(dm.test_dataset.load_image(4)))


def test_pax_archive_with_long_names_uses_tarfile_fallback(tmp_path: Path) -> None:
    long_class = "c" * 120  # longer than the 100-byte ustar name field
    folder = make_toy_folder(tmp_path / "d", classes=("a", long_class), per_class={"train": 2, "val": 1, "test": 1})
    pax = tar_folder(folder, tmp_path / "toy.tar", fmt=tarfile.PAX_FORMAT)
    index = read_tar_index(pax)
    assert any(long_class in n for n in index.names)
    dm = ImageDataModule("folder", root=str(pax), img_size=8, num_workers=0)
    dm.setup()
    assert dm.class_names == ["a", long_class] and dm.train_size == 4


def test_folder_valid_alias_and_ignored_metadata(tmp_path: Path) -> None:
    folder = make_toy_folder(tmp_path, name="mine", splits=("train", "valid"), per_class={"train": 3, "valid": 2})
    (folder / "classes.tsv").write_text("metadata next to the splits is ignored\n")
    (folder / "train" / "cat" / ".DS_Store").write_text("hidden files are ignored")
    dm = ImageDataModule("folder", root=str(tmp_path), folder_name="mine", img_size=8, num_workers=0)
    dm.setup()
    # 'valid' is the val split; with no test folder, the val split also serves for testing.
    assert (dm.train_size, dm.val_size, dm.test_size) == (9, 6, 6)


def test_folder_holdout_when_no_eval_split(tmp_path: Path) -> None:
    make_toy_folder(tmp_path, name="only", splits=("train",), per_class={"train": 10})
    dm = ImageDataModule("folder", root=str(tmp_path), folder_name="only", img_size=8, num_workers=0, val_fraction=0.2)
    dm.setup()
    assert dm.subset_info["val_split"] == "holdout"
    assert dm.val_size == 6 and dm.train_size == 24 and dm.test_dataset is None
    with pytest.raises(RuntimeError, match="no val/test split"):
        dm.test_dataloader()


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------


def test_stratified_subset_and_holdout_units() -> None:
    labels = np.repeat(np.arange(4), [10, 20, 30, 5])
    a = stratified_subset(labels, 4, samples_per_class=5, seed=1)
    assert np.bincount(labels[a]).tolist() == [5, 5, 5, 5]
    assert np.array_equal(a, stratified_subset(labels, 4, samples_per_class=5, seed=1))
    assert not np.array_equal(a, stratified_subset(labels, 4, samples_per_class=5, seed=2))
    f = stratified_subset(labels, 4, fraction=0.1, seed=0)
    assert np.bincount(labels[f]).tolist() == [1, 2, 3, 1]  # round(0.5) -> 1 (at least one)
    keep, held = stratified_holdout(labels, 4, fraction=0.2, seed=0)
    assert np.bincount(labels[held]).tolist() == [2, 4, 6, 1]
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(labels)
    with pytest.raises(ValueError, match=r"class 3 .*5 samples"):
        stratified_subset(labels, 4, samples_per_class=6)


def test_a_class_subset_is_relabelled_in_every_split(cifar10_tar, tmp_path):
    """Pretraining on five CIFAR-10 classes and fine-tuning on the other five: disjoint images and labels 0..4."""
    first = ["airplane", "automobile", "bird", "cat", "deer"]
    second = ["truck", "dog", "frog", "horse", "ship"]  # any order: labels follow the data set's order
    dms = []
    for names in (first, second):
        dm = ImageDataModule(
            "cifar10", root=str(cifar10_tar), classes=names, samples_per_class=3, num_workers=0, img_size=8
        )
        assert dm.num_classes == 5  # known before setup, for the model
        dm.setup()
        dms.append(dm)
        assert dm.class_names == sorted(names)
        for ds in (dm.train_dataset, dm.test_dataset):
            labels = [int(y) for y in ds.labels]
            assert sorted(set(labels)) == [0, 1, 2, 3, 4] and int(ds[len(ds) - 1][1]) == labels[-1]
            # each image's folder is the class its label names
            assert all(k.split("/")[1] == dm.class_names[y] for k, y in zip(ds.keys(), labels))
        assert dm.test_size == 5000 and dm.train_size == 15
    assert not set(dms[0].test_dataset.keys()) & set(dms[1].test_dataset.keys())
    with pytest.raises(
        DatasetLayoutError,
        match=r"classes=\['cat', 'lion'\] has unknown class\(es\) \['lion'\]; .* has the classes \['airplane'",
    ):
        ImageDataModule("cifar10", root=str(cifar10_tar), classes=["cat", "lion"], num_workers=0).setup()
