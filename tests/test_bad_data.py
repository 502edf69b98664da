"""Bad data reaches the user as one paragraph and exit code 2, before any model is built."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from image_folders import make_image_folder
from test_train import TINY, cli, compose_cfg

from vt_drloc.config import UserError
from vt_drloc.train import train

FOLDER = ["data=folder", "data.folder_name=toy", "data.val_split=auto", "data.samples_per_class=null"]


def toy(root: Path, splits=("train", "val", "test")) -> Path:
    return make_image_folder(root, "toy", ("cat", "dog", "emu"), 4, splits, size=10)


@pytest.mark.fault(
    "a folder data set without a test split",
    "with a val split: val is the test set, logged, and `results.json` has `test_split: val`; with neither: refused "
    "before training (exit 2) unless `test=false` (was: a crash after training)",
    kind="bad input",
)
def test_a_folder_without_a_test_split(tmp_path: Path) -> None:
    only_train = tmp_path / "a"
    toy(only_train, ("train",))
    cfg = compose_cfg(
        TINY + FOLDER + [f"data.root={only_train}", "data.val_split=holdout", "data.val_fraction=0.25"], tmp_path / "r1"
    )
    with pytest.raises(UserError, match=r"has neither a test nor a val split, so test=true .* or pass test=false"):
        train(cfg)
    assert not (tmp_path / "r1" / "checkpoints").exists()
    # with a val split only, val is the test set, and results.json says so
    val_only = tmp_path / "b"
    toy(val_only, ("train", "val"))
    results = train(compose_cfg(TINY + FOLDER + [f"data.root={val_only}"], tmp_path / "r2"))
    assert results["test_split"] == "val" and results["test_acc1"] is not None


@pytest.mark.fault(
    "a truncated image in a folder; an archive cut short (CLI)",
    'exit 2 before training, naming the file and `data.skip_corrupt=true` / "corrupt archive <file>"; with '
    "`data.skip_corrupt=true` the image is skipped and counted in `results.json`",
    kind="bad input",
)
def test_a_truncated_image_or_archive_exits_2_before_training(tmp_path: Path) -> None:
    folder = toy(tmp_path / "data")
    bad = folder / "train" / "dog" / "001.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    cfg = compose_cfg(TINY + FOLDER + [f"data.root={tmp_path / 'data'}"], tmp_path / "r1")
    with pytest.raises(UserError, match=rf"truncated image {bad} .*pass data.skip_corrupt=true to skip bad files"):
        train(cfg)
    assert not (tmp_path / "r1" / "checkpoints").exists()
    skipped = train(
        compose_cfg(TINY + FOLDER + [f"data.root={tmp_path / 'data'}", "data.skip_corrupt=true"], tmp_path / "r2")
    )
    assert skipped["skipped_files"] == 1 and skipped["train_size"] == 11
    # an archive cut short, through the command line
    bad.unlink()
    tar = tmp_path / "archive" / "toy.tar"
    tar.parent.mkdir()
    with tarfile.open(tar, "w") as tf:
        tf.add(folder, arcname="toy")
    tar.write_bytes(tar.read_bytes().rstrip(b"\0")[:-50])  # into the last image, not just the zero padding
    run = cli(
        "vt_drloc.train",
        [*TINY, *FOLDER, f"data.root={tar.parent}", f"hydra.run.dir={tmp_path / 'r3'}"],
        tmp_path,
        timeout=300,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    error = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"corrupt archive {tar}" in error[0] and "cut short" in error[0], run.stderr[-2000:]
    assert "classes" not in error[0]  # never "needs N classes" from a silently smaller index
