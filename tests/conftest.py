from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vt_drloc.base.paths import data_root_candidates, default_data_root

# Two cores: keep torch from oversubscribing them when tests spawn workers.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Directory holding the real, offline data archives (``cifar10.tar``, ``flowers102.tar``)."""
    root = default_data_root()
    if root is None:
        searched = "\n  ".join(str(p) for p in data_root_candidates())
        pytest.fail(
            "The data archives are required for this test and were not found. Searched:\n  "
            f"{searched}\nSet VT_DRLOC_DATA to the folder holding cifar10.tar and flowers102.tar."
        )
    return root


@pytest.fixture(scope="session")
def cifar10_tar(data_root: Path) -> Path:
    path = data_root / "cifar10.tar"
    assert path.is_file(), f"missing {path}"
    return path


@pytest.fixture(scope="session")
def flowers102_tar(data_root: Path) -> Path:
    path = data_root / "flowers102.tar"
    assert path.is_file(), f"missing {path}"
    return path


@pytest.fixture(autouse=True)
def restore_environment():
    """Each test sees the environment the session started with: ``seed_everything`` in one test sets
    ``PL_GLOBAL_SEED``, which would reseed every rank of a later test's DDP subprocess alike."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
