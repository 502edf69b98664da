"""Every bad input of the data layer fails before training, naming the path / value and the fix."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tarfile
from pathlib import Path

import pytest
from image_folders import make_image_folder
from PIL import Image

from vt_drloc.data import (
    KNOWN_DATASETS,
    CorruptArchiveError,
    CorruptImageError,
    DatasetLayoutError,
    DatasetNotFoundError,
    ImageDataModule,
    check_archive_sha256,
)


def make_toy_folder(
    root: Path, name: str = "toy", classes=("cat", "dog", "emu"), per_class: int = 4, splits=("train", "val")
) -> Path:
    return make_image_folder(root, name, classes, per_class, splits, size=10, ext="jpg")


def folder_dm(root: Path, **kw) -> ImageDataModule:
    kw.setdefault("img_size", 8)
    kw.setdefault("num_workers", 0)
    return ImageDataModule("folder", root=str(root), folder_name="toy", **kw)


# ---------------------------------------------------------------------------------------------
# missing data
# ---------------------------------------------------------------------------------------------


@pytest.mark.fault(
    "a data set that is not where `data.root` points",
    "every path searched listed, with how to get the data",
    kind="bad input",
)
def test_missing_root_lists_searched_paths_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    dm = ImageDataModule("cifar10", root=str(missing), download=False)
    dm.prepare_data()  # download off: never fetches anything
    assert not missing.exists()
    with pytest.raises(DatasetNotFoundError) as err:
        dm.setup()
    msg = str(err.value)
    assert str(missing) in msg and "does not exist" in msg
    assert "cifar10.tar" in msg and "download=True" in msg and "VT_DRLOC_DATA" in msg

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        ImageDataModule("svhn", root=str(empty)).setup()
    msg = str(err.value)
    for searched in ("svhn.tar", f"svhn{'/'}train", "train_32x32.mat"):
        assert searched in msg
    assert str(empty) in msg


def test_missing_with_default_root_names_candidates(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VT_DRLOC_DATA", str(tmp_path / "env_data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(DatasetNotFoundError) as err:
        ImageDataModule("cifar100", root=None).setup()
    msg = str(err.value)
    assert str(tmp_path / "torch_home" / "datasets") in msg  # torchvision default searched
    assert str(tmp_path / "env_data") in msg  # the VT_DRLOC_DATA candidate is listed
    assert "cifar-100-python" in msg and "download=True" in msg


def test_folder_cannot_download(tmp_path: Path) -> None:
    dm = ImageDataModule("folder", root=str(tmp_path), folder_name="toy", download=True)
    with pytest.raises(DatasetNotFoundError, match="cannot be downloaded"):
        dm.prepare_data()


@pytest.mark.fault(
    "`data.root` a non-tar file, or a compressed `.tar`",
    "refused, saying an uncompressed .tar or the extracted folder is needed",
    kind="bad input",
)
def test_root_is_a_non_tar_file_or_compressed_tar(tmp_path: Path) -> None:
    txt = tmp_path / "data.zip"
    txt.write_bytes(b"PK")
    with pytest.raises(DatasetNotFoundError, match=r"data\.zip.*not an uncompressed \.tar"):
        ImageDataModule("cifar10", root=str(txt)).setup()
    folder = make_toy_folder(tmp_path / "src")
    plain = tmp_path / "toy_plain.tar"
    with tarfile.open(plain, "w") as tf:
        tf.add(folder, arcname="toy")
    gz = tmp_path / "toy.tar"
    with open(plain, "rb") as fi, gzip.open(gz, "wb") as fo:
        shutil.copyfileobj(fi, fo)
    with pytest.raises(ValueError, match=r"toy\.tar is a compressed archive"):
        ImageDataModule("folder", root=str(gz)).setup()


# ---------------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------------


@pytest.mark.fault(
    "splits with different class folders", "refused, listing the missing and extra classes", kind="bad input"
)
def test_splits_with_different_class_folders(tmp_path: Path) -> None:
    folder = make_toy_folder(tmp_path)
    shutil.rmtree(folder / "val" / "dog")
    with pytest.raises(DatasetLayoutError) as err:
        folder_dm(tmp_path).setup()
    msg = str(err.value)
    assert "'val'" in msg and "missing ['dog']" in msg and str(folder) in msg
    # The same inside a tar archive, with an extra class instead.
    (folder / "val" / "dog").mkdir()
    Image.new("RGB", (4, 4)).save(folder / "val" / "dog" / "x.jpg")
    (folder / "val" / "yak").mkdir()
    Image.new("RGB", (4, 4)).save(folder / "val" / "yak" / "y.jpg")
    tar = tmp_path / "toy.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(folder, arcname="toy")
    with pytest.raises(DatasetLayoutError, match=r"extra \['yak'\]") as err:
        ImageDataModule("folder", root=str(tar), img_size=8).setup()
    assert "toy.tar" in str(err.value)


@pytest.mark.fault("an empty class folder; no train split", "refused, naming the folders", kind="bad input")
def test_empty_class_folder_and_missing_train(tmp_path: Path) -> None:
    folder = make_toy_folder(tmp_path)
    (folder / "train" / "zebra").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"empty class folders: \['train/zebra'\]"):
        folder_dm(tmp_path).setup()
    other = tmp_path / "other"
    make_toy_folder(other, splits=("val",))
    (other / "toy" / "train").mkdir()
    with pytest.raises(DatasetLayoutError, match="no images under a train/<class>/"):
        folder_dm(other).setup()


@pytest.mark.fault(
    "a named data set (e.g. cifar10) with the wrong number of classes", "refused, naming both counts", kind="bad input"
)
def test_wrong_class_count_for_named_dataset(tmp_path: Path) -> None:
    make_toy_folder(tmp_path, name="cifar10")
    with pytest.raises(DatasetLayoutError, match="cifar10 needs 10 classes.*has 3"):
        ImageDataModule("cifar10", root=str(tmp_path), num_workers=0).setup()


# ---------------------------------------------------------------------------------------------
# bad files
# ---------------------------------------------------------------------------------------------


@pytest.mark.fault(
    "a file that is not an image in a class folder",
    "refused naming the file; `skip_corrupt` skips and counts it",
    kind="bad input",
)
def test_corrupt_image_is_named_and_skip_mode_counts(tmp_path: Path, caplog) -> None:
    folder = make_toy_folder(tmp_path)
    bad = folder / "train" / "dog" / "002.jpg"
    bad.write_text("this is not a JPEG")
    with pytest.raises(CorruptImageError) as err:
        folder_dm(tmp_path).setup()
    assert str(bad) in str(err.value) and "skip_corrupt=True" in str(err.value)
    # Opt-in skip mode: counted, reported, the file left out.
    dm = folder_dm(tmp_path, skip_corrupt=True)
    with caplog.at_level("WARNING", logger="vt_drloc.data"):
        dm.setup()
    assert dm.train_size == 11 and len(dm.skipped) == 1 and str(bad) in dm.skipped[0]
    assert dm.subset_info["skipped_files"] == 1
    assert "skipped 1 bad file" in caplog.text and "002.jpg" in caplog.text
    assert "train/dog/002.jpg" not in dm.train_dataset.keys()


def test_non_image_file_in_class_folder(tmp_path: Path) -> None:
    folder = make_toy_folder(tmp_path)
    note = folder / "val" / "emu" / "notes.txt"
    note.write_text("hello")
    with pytest.raises(CorruptImageError, match=r"non-image file.*notes\.txt.*skip_corrupt=True"):
        folder_dm(tmp_path).setup()
    dm = folder_dm(tmp_path, skip_corrupt=True)
    dm.setup()
    assert dm.val_size == 12 and len(dm.skipped) == 1 and "notes.txt" in dm.skipped[0]


@pytest.mark.fault(
    "a JPEG cut short inside a tar",
    "found by the default cheap check (first and last bytes) before training (was: found only mid-run); named with its "
    "archive path",
    kind="bad input",
)
def test_truncated_image_in_tar_found_before_training_by_every_check(tmp_path: Path) -> None:
    folder = make_toy_folder(tmp_path / "src")
    src = folder / "train" / "cat" / "001.jpg"
    src.write_bytes(src.read_bytes()[:60])  # valid JPEG header, truncated data
    tar = tmp_path / "toy.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(folder, arcname="toy")
    where = f"{tar}:toy/train/cat/001.jpg"
    for verify in ("header", "full"):  # the default cheap check reads the file's end too
        with pytest.raises(CorruptImageError, match="001.jpg") as err:
            ImageDataModule("folder", root=str(tar), img_size=8, num_workers=0, verify=verify).setup()
        assert where in str(err.value) and "skip_corrupt=True" in str(err.value)
    assert "truncated image" in str(first_corrupt_image_error(tar))
    skip = ImageDataModule("folder", root=str(tar), img_size=8, num_workers=0, skip_corrupt=True)
    skip.setup()
    assert skip.train_size == 11 and len(skip.skipped) == 1 and "001.jpg" in skip.skipped[0]
    # With verify off, caching decodes and catches it before training ...
    dm = ImageDataModule("folder", root=str(tar), img_size=8, num_workers=0, cache=True, verify="none")
    dm.setup()
    with pytest.raises(CorruptImageError, match="001.jpg"):
        dm.train_dataloader()
    # ... and without cache the error surfaces when the sample is read, still naming the file.
    lazy = ImageDataModule("folder", root=str(tar), img_size=8, num_workers=0, augment="none", verify="none")
    lazy.setup()
    k = lazy.train_dataset.keys().index("train/cat/001.jpg")
    with pytest.raises(CorruptImageError, match=where.replace(".", r"\.")):
        lazy.train_dataset[k]


def first_corrupt_image_error(root: Path) -> CorruptImageError:
    try:
        ImageDataModule("folder", root=str(root), img_size=8, num_workers=0).setup()
    except CorruptImageError as err:
        return err
    raise AssertionError("no CorruptImageError")


@pytest.mark.parametrize("ext", ["jpg", "png", "gif", "bmp", "webp"])
@pytest.mark.fault(
    "a {ext} image cut in half",
    "found before training by its end bytes or recorded size; bytes appended after a whole image are accepted",
    kind="bad input",
)
def test_header_check_finds_each_formats_truncation_and_keeps_trailing_bytes(tmp_path: Path, ext: str) -> None:
    folder = make_image_folder(tmp_path, "toy", ("a", "b"), 3, ("train", "val"), size=12, ext=ext)
    whole = folder / "train" / "a" / f"000.{ext}"
    data = whole.read_bytes()
    # bytes after an image's end (some cameras append data) decode fine: kept, after one decode
    extra = folder / "train" / "b" / f"001.{ext}"
    extra.write_bytes(extra.read_bytes() + b"\0" * 7)
    whole.write_bytes(data[: len(data) // 2])  # cut in half, as an interrupted copy leaves it
    with pytest.raises(CorruptImageError, match=f"000.{ext}"):
        folder_dm(tmp_path).setup()
    whole.write_bytes(data)
    dm = folder_dm(tmp_path)
    dm.setup()
    assert dm.train_size == 6 and dm.skipped == []


# ---------------------------------------------------------------------------------------------
# bad values
# ---------------------------------------------------------------------------------------------


def test_samples_per_class_larger_than_a_class(cifar10_tar: Path, flowers102_tar: Path) -> None:
    with pytest.raises(ValueError, match=r"samples_per_class=5001 .*5000 samples.*<= 5000"):
        ImageDataModule("cifar10", root=str(cifar10_tar), samples_per_class=5001, num_workers=0).setup()
    with pytest.raises(ValueError, match=r"samples_per_class=11 .*'000_pink_primrose': 10 samples"):
        ImageDataModule("flowers102", root=str(flowers102_tar), samples_per_class=11, num_workers=0).setup()


def test_unknown_dataset_name_lists_known() -> None:
    with pytest.raises(ValueError) as err:
        ImageDataModule("imagenet21k")
    msg = str(err.value)
    assert "'imagenet21k'" in msg
    for name in KNOWN_DATASETS:
        assert name in msg


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(samples_per_class=5, train_fraction=0.1), "not both"),
        (dict(samples_per_class=0), "samples_per_class=0 must be a positive integer"),
        (dict(samples_per_class=2.5), "samples_per_class=2.5"),
        (dict(train_fraction=0.0), r"train_fraction=0.0 must lie in \(0, 1\]"),
        (dict(train_fraction=1.5), "train_fraction=1.5"),
        (dict(val_split="dev"), "val_split='dev' is not one of"),
        (dict(val_fraction=1.0), "val_fraction=1.0"),
        (dict(augment="heavy"), "augment='heavy' is not one of"),
        (dict(verify="sometimes"), "verify='sometimes' is not one of"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(mixup_alpha=-1.0), "mixup_alpha=-1.0"),
        (dict(mixup_mode="row"), "mixup_mode='row'"),
        (dict(mean=[0.5, 0.5]), "need 3 values"),
        (dict(name="folder"), "name='folder' needs folder_name"),
    ],
)
def test_bad_constructor_values(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ImageDataModule(**kwargs)


def test_val_split_val_on_cifar_has_no_val_split(cifar10_tar: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="no val split.*val_split='test'"):
        ImageDataModule("cifar10", root=str(cifar10_tar), val_split="val", num_workers=0).setup()


def test_drop_last_with_too_few_images(tmp_path: Path) -> None:
    make_toy_folder(tmp_path)
    dm = folder_dm(tmp_path, batch_size=64, drop_last=True)
    dm.setup()
    with pytest.raises(ValueError, match="drop_last=True with 12 training images"):
        dm.train_dataloader()
    auto = folder_dm(tmp_path, batch_size=64)
    auto.setup()
    assert len(auto.train_dataloader()) == 1  # auto: keep the partial batch of a tiny subset


def test_properties_before_setup() -> None:
    dm = ImageDataModule("cifar10")
    assert dm.num_classes == 10
    with pytest.raises(RuntimeError, match=r"after setup\(\)"):
        _ = dm.class_names
    with pytest.raises(RuntimeError, match=r"after setup\(\)"):
        dm.train_dataloader()


# ---------------------------------------------------------------------------------------------
# corrupt archives
# ---------------------------------------------------------------------------------------------


def toy_tar(tmp_path: Path, fmt: int = tarfile.USTAR_FORMAT, long_names: bool = False) -> Path:
    folder = make_toy_folder(
        tmp_path / "src", classes=("cat", "dog" * (40 if long_names else 1), "emu"), splits=("train", "test")
    )
    tar = tmp_path / "data" / "toy.tar"
    tar.parent.mkdir()
    with tarfile.open(tar, "w", format=fmt) as tf:
        tf.add(folder, arcname="toy")
    return tar


@pytest.mark.parametrize(
    "fmt, long_names", [(tarfile.USTAR_FORMAT, False), (tarfile.PAX_FORMAT, True)]
)  # fast index / tarfile
@pytest.mark.fault(
    "a tar archive cut short (inside a member or a header; ustar and pax)",
    '"corrupt archive <file>: it is cut short", never "needs 10 classes" nor a silently smaller split',
    kind="bad input",
)
def test_archive_cut_short_is_corrupt_never_a_smaller_split(tmp_path: Path, fmt: int, long_names: bool) -> None:
    tar = toy_tar(tmp_path, fmt, long_names)
    data = tar.read_bytes()
    whole = folder_dm(tar.parent)
    whole.setup()
    assert whole.train_size == 12 and whole.test_size == 12
    # a cut inside the last member's data, and one inside a header (a copy stopped at any byte)
    last_member = data.rstrip(b"\0")
    for cut in (len(last_member) - 5, len(data) // 2 + 100):
        tar.write_bytes(data[:cut])
        with pytest.raises(CorruptArchiveError, match=r"corrupt archive .*toy\.tar: .*cut short") as err:
            folder_dm(tar.parent).setup()
        assert "Copy or download it again" in str(err.value)


@pytest.mark.fault(
    "an archive whose bytes differ from its `SHA256SUMS` line (same size, one byte changed)",
    '"corrupt archive <file>: its SHA-256 is …, but SHA256SUMS lists …"; checked once per process (0.07 s for the 93 '
    "MB CIFAR-10 archive)",
    kind="bad input",
)
def test_sha256sums_beside_the_archive_is_checked(tmp_path: Path) -> None:
    tar = toy_tar(tmp_path)
    sums = tar.parent / "SHA256SUMS"
    good = hashlib.sha256(tar.read_bytes()).hexdigest()
    sums.write_text(f"{'0' * 64}  other.tar\n{good} *toy.tar\n")  # sha256sum's binary-mode mark too
    assert check_archive_sha256(tar) is True
    dm = folder_dm(tar.parent)
    dm.setup()
    assert dm.train_size == 12
    # same size, one byte changed inside an image: only the checksum can tell
    data = bytearray(tar.read_bytes())
    data[len(data) // 3] ^= 0xFF
    tar.write_bytes(bytes(data))
    with pytest.raises(
        CorruptArchiveError,
        match=rf"corrupt archive .*toy\.tar: its SHA-256 is [0-9a-f]{{64}}, but .*SHA256SUMS lists {good}",
    ):
        folder_dm(tar.parent).setup()
    sums.write_text(f"{'0' * 64}  other.tar\n")  # no line for this archive: nothing to check
    assert check_archive_sha256(tar) is False
