"""bench/gpu_paper_rows.sh, the accelerator script: its reduced archive and a CPU dry run of the same code."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from make_flowers_subset import main as make_subset  # noqa: E402


def fixture_tar(path: Path, size: int = 200) -> Path:
    """A flowers102-layout archive: 3 classes x 2 images in each official split, noisy so JPEG cannot cheat."""
    g = __import__("random").Random(0)
    with tarfile.open(path, "w") as tar:
        for split in ("train", "val", "test"):
            for c in ("000_a", "001_b", "002_c"):
                for i in range(2):
                    image = Image.frombytes(
                        "RGB", (size, size + 40), bytes(g.randrange(256) for _ in range(3 * size * (size + 40)))
                    )
                    data = io.BytesIO()
                    image.save(data, "JPEG", quality=95)
                    info = tarfile.TarInfo(f"flowers102/{split}/{c}/image_{i}.jpg")
                    info.size = data.tell()
                    tar.addfile(info, io.BytesIO(data.getvalue()))
    return path


def test_the_reduced_archive_keeps_every_member_smaller_with_its_checksum(tmp_path):
    src = fixture_tar(tmp_path / "full.tar")
    out = tmp_path / "small"
    assert make_subset(["--src", str(src), "--out-dir", str(out), "--short-side", "64", "--quality", "60"]) == 0
    small = out / "flowers102.tar"
    with tarfile.open(src) as a, tarfile.open(small) as b:
        assert a.getnames() == b.getnames()  # the official split, every image, same names
        for member in b.getmembers():
            image = Image.open(io.BytesIO(b.extractfile(member).read()))
            assert min(image.size) == 64 and image.size[1] > image.size[0]  # shorter side, aspect kept
    assert small.stat().st_size < src.stat().st_size / 3
    digest, name = (out / "SHA256SUMS").read_text().split()
    assert name == "flowers102.tar" and digest == hashlib.sha256(small.read_bytes()).hexdigest()
    # deterministic: the same source gives the same bytes
    assert (
        make_subset(["--src", str(src), "--out-dir", str(tmp_path / "again"), "--short-side", "64", "--quality", "60"])
        == 0
    )
    assert (tmp_path / "again" / "flowers102.tar").read_bytes() == small.read_bytes()


def test_the_reduced_archive_refuses_to_exceed_its_size_limit(tmp_path, capsys):
    src = fixture_tar(tmp_path / "full.tar")
    assert make_subset(["--src", str(src), "--out-dir", str(tmp_path / "o"), "--max-mb", "0.001"]) == 2
    assert "over --max-mb 0.001" in capsys.readouterr().err
    assert make_subset(["--src", str(tmp_path / "missing.tar"), "--out-dir", str(tmp_path / "o")]) == 2


@pytest.mark.slow
def test_the_accelerator_script_dry_runs_on_the_cpu_without_hydra(tmp_path, flowers102_tar):
    data = tmp_path / "data"
    assert make_subset(["--src", str(flowers102_tar), "--out-dir", str(data), "--per-class", "1"]) == 0
    # the lent machine has no hydra-core / omegaconf: block them in the script's process
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('hydra', 'omegaconf', 'antlr4'):\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    env = {
        **os.environ,
        "PY": sys.executable,
        "DATA": str(data),
        "OUT": str(tmp_path / "out"),
        "PYTHONPATH": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_paper_rows.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["smoke"]["loss_finite"] and summary["step_ratio"]["ratio"] > 0
    assert [r["lambda_drloc"] for r in summary["rows"]] == [0.0, 0.5]
    for row in summary["rows"]:
        record = json.loads((tmp_path / "out" / row["row"] / "results.json").read_text())
        assert 0 <= record["test_acc1"] <= 1 and record["epochs"] == 1
    assert "| swin_t_flowers102_lam0.5 | 0.5 | 1 |" in (tmp_path / "out" / "table.md").read_text()


def test_the_script_refuses_an_archive_that_is_not_the_committed_one(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "flowers102.tar").write_bytes(b"not the archive")
    env = {**os.environ, "PY": sys.executable, "DATA": str(data), "OUT": str(tmp_path / "out")}
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_paper_rows.sh")], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2 and "not the committed" in result.stderr
