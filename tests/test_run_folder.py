"""One writer per run folder; a refused run rewrites nothing (issue 26, item 5)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import TINY, cli

from vt_drloc.app.run_folder import LOCK_NAME, RunLock, lock_holder

FAST = [*TINY, "callbacks.rich_progress_bar=null", "logger=none"]


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.fault(
    "a run refused by a finished run's folder",
    "every file of the finished run byte-identical, `.hydra/` included (Hydra no longer writes it before the checks)",
    kind="bad input",
)
def test_refused_run_leaves_a_finished_run_byte_identical(tmp_path):
    out = tmp_path / "run"
    first = cli("vt_drloc.train", [*FAST, f"hydra.run.dir={out}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(out)
    assert ".hydra/config.yaml" in before and ".hydra/overrides.yaml" in before and "results.json" in before
    assert LOCK_NAME not in before  # released at the end
    again = cli("vt_drloc.train", [*FAST, "seed=7", f"hydra.run.dir={out}"], tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr, again.stderr[-3000:]
    assert snapshot(out) == before


@pytest.mark.fault(
    "a second run into a folder a live run is writing (its `.run.lock` names a live process)",
    "refused with the holder's pid, exit 2, nothing written",
    kind="bad input",
)
def test_second_run_into_a_folder_in_use_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (out / LOCK_NAME).write_text(f"{holder.pid}\n")
        refused = cli("vt_drloc.train", [*FAST, f"hydra.run.dir={out}"], tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "in use by another run" in refused.stderr and str(holder.pid) in refused.stderr
    # nothing written but the (empty) log file Hydra opens before the task runs
    assert set(p.name for p in out.iterdir()) <= {LOCK_NAME, "train.log"}
    assert not (out / "train.log").exists() or (out / "train.log").read_text() == ""


@pytest.mark.fault("a `.run.lock` left by a killed process", "taken over by the next run")
def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(f"{dead.pid}\n")
    assert lock_holder(tmp_path) is None
    with RunLock(tmp_path) as lock:
        assert lock.held and (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / LOCK_NAME).exists()
