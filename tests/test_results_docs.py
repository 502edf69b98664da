"""docs/results.md: its tables are the ones the report computes from the committed results.json files."""

from __future__ import annotations

from pathlib import Path

import pytest

from vt_drloc.report.gain_curve import gain_curve_markdown, gain_curve_specs, gain_points, load_spec
from vt_drloc.report.study import find_cells, load_study, study_markdown
from vt_drloc.report.sweep import load_sweep
from vt_drloc.report.tables import summary_markdown

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "docs" / "results.md"
STUDIES = sorted(p for p in (ROOT / "studies").iterdir() if p.is_dir() and p.name.startswith("study_"))


def table_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def test_there_are_committed_studies():
    assert {"study_cifar10", "study_flowers102"} <= {p.name for p in STUDIES}


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_committed_summaries_and_results_md_match_the_results_json(study):
    """Each committed summary.md / study.md is what the report writes today from the committed jobs,
    and docs/results.md quotes the study table unchanged."""
    for cell in find_cells(study):
        assert (cell / "summary.md").read_text() == summary_markdown(load_sweep(cell)), (
            f"{cell}: rerun python -m vt_drloc.report --study {study}"
        )
    rows = load_study(study)
    markdown = study_markdown(rows, study.name)
    assert (study / "study.md").read_text() == markdown, f"rerun python -m vt_drloc.report --study {study}"
    for document in (RESULTS_MD, ROOT / "README.md"):
        text = document.read_text()
        for line in table_lines(markdown):
            assert line in text, f"{document.name} lacks this row of {study.name}/study.md:\n{line}"
    for spec_file in gain_curve_specs(study):  # the gain curves too, and results.md quotes their rows
        spec = load_spec(spec_file)
        curve = gain_curve_markdown(gain_points(rows, spec), spec.get("title", study.name))
        written = study / f"{spec_file.stem}.md"
        assert written.read_text() == curve, f"rerun python -m vt_drloc.report --study {study}"
        for line in table_lines(curve):
            assert line in RESULTS_MD.read_text(), f"results.md lacks this row of {study.name}/{written.name}:\n{line}"
    for row in rows:  # every row compares >= 3 seeds, each run on the full test split
        assert row.values()["seeds_paired"] >= 3, row.label
        assert all(job.results.get("status") == "ok" for job in row.drloc.jobs + row.baseline.jobs), row.label


# the IJG (libjpeg) luminance table; quality q scales it (libjpeg's jpeg_quality_scaling)
IJG_LUMINANCE = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56]
IJG_LUMINANCE += [14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113]
IJG_LUMINANCE += [92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]


def jpeg_quality(image) -> int | None:
    """The libjpeg quality whose luminance table the JPEG uses (None: not a libjpeg table)."""
    for quality in range(1, 101):
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        if sorted(min(255, max(1, (v * scale + 50) // 100)) for v in IJG_LUMINANCE) == sorted(image.quantization[0]):
            return quality
    return None


@pytest.mark.parametrize(
    "archive, claims, quality, shorter_side",
    [
        ("cifar10_tar", ["JPEG (quality 75, 4:2:0"], 75, 32),
        ("flowers102_tar", ["shorter side is 128 px", "JPEG quality 90"], 90, 128),
    ],
)
def test_the_data_caveats_results_md_states_are_true_of_the_archives(request, archive, claims, quality, shorter_side):
    """docs/results.md's "Data caveats" (lossy JPEG copies, resized Flowers-102), checked on the archives' images:
    their JPEG quality, chroma subsampling (4:2:0) and size."""
    import io
    import tarfile

    from PIL import Image, JpegImagePlugin

    caveats = RESULTS_MD.read_text().split("## Data caveats")[1]
    assert all(claim in caveats for claim in claims), claims
    with tarfile.open(request.getfixturevalue(archive)) as tar:
        images = []
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                images.append((member.name, Image.open(io.BytesIO(tar.extractfile(member).read()))))
            if len(images) == 5:
                break
    assert len(images) == 5
    for name, image in images:
        assert jpeg_quality(image) == quality, f"{name}: JPEG quality {jpeg_quality(image)}, results.md says {quality}"
        assert JpegImagePlugin.get_sampling(image) == 2, f"{name}: not 4:2:0 chroma subsampling"
        assert min(image.size) == shorter_side, f"{name}: {image.size}"


def _without_drloc(config: dict) -> str:
    import json

    config = {k: v for k, v in config.items() if k not in ("drloc", "paths", "task_name")}
    return json.dumps(config, sort_keys=True, default=str)


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_reruns_of_the_same_baseline_give_the_same_numbers(study):
    """Baselines (λ=0: no head, so the DRLoc options are unused) that ran the same composed config
    and seed in different cells are re-runs: on this machine they score exactly the same."""
    import yaml

    groups: dict[str, list[dict]] = {}
    for job_dir in sorted(study.rglob("results.json")):
        results = __import__("json").loads(job_dir.read_text())
        config_file = job_dir.parent / ".hydra" / "config.yaml"
        if results.get("status") != "ok" or results.get("lambda_drloc") != 0 or not config_file.is_file():
            continue
        groups.setdefault(_without_drloc(yaml.safe_load(config_file.read_text())), []).append(results)
    # a cell may reuse another cell's baselines as copies (same output_dir): those are one run, not re-runs
    groups = {k: list({r["output_dir"]: r for r in g}.values()) for k, g in groups.items()}
    reruns = [g for g in groups.values() if len(g) > 1]
    if study.name == "study_cifar10":
        assert len(reruns) >= 3  # spc100_vit's three baselines were re-run by the spc100_vit_paper cell
    for group in reruns:
        for key in ("val_acc1", "test_acc1", "test_acc5", "global_step"):
            assert len({r[key] for r in group}) == 1, (key, [r["output_dir"] for r in group])


def test_results_md_quotes_the_drloc_task_table():
    """The 'did the head learn its task?' table is bench/drloc_task.py's output for the committed runs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("drloc_task", ROOT / "bench" / "drloc_task.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    table = bench.markdown(bench.task_rows(STUDIES, 8), 8)
    text = RESULTS_MD.read_text()
    for line in table_lines(table):
        assert line in text, f"docs/results.md lacks this row of bench/drloc_task.py:\n{line}"
    rows = bench.task_rows(STUDIES, 8)
    assert rows and all(r["seeds"] >= 3 and 0 < r["last_over_chance"] < 1.1 for r in rows)


def test_results_md_quotes_the_per_stage_head_table():
    """The multi-scale cells' per-stage head table is bench/stage_task.py's output for the committed runs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stage_task", ROOT / "bench" / "stage_task.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.stage_rows(STUDIES)
    assert rows and all(len(r["stages"]) >= 2 for r in rows)
    assert all(len(s["last_over_chance"]) >= 3 and 0 < min(s["last_over_chance"]) for r in rows for s in r["stages"])
    text = RESULTS_MD.read_text()
    for line in table_lines(bench.markdown(rows)):
        assert line in text, f"docs/results.md lacks this row of bench/stage_task.py:\n{line}"


PROBES = ROOT / "studies" / "probes"


def test_results_md_quotes_the_head_onset_table():
    """'Less data': when each ViT run's head left its plateau is bench/head_onset.py's output for the
    committed runs; its λ·steps sum follows the run's λ schedule step by step."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("head_onset", ROOT / "bench" / "head_onset.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # warm-up over 2 epochs then linear decay to 0 at epoch 10, one step per epoch: 0 + 0.5 + 1 + 7/8
    options = {"schedule": "warmup_decay", "warmup_epochs": 2, "decay_epochs": None, "interval": "step"}
    assert bench.lambda_steps(options, 1.0, 10, 1, 4) == pytest.approx(2.375)
    assert bench.lambda_steps({**options, "schedule": "constant"}, 3.0, 10, 1, 4) == pytest.approx(12.0)
    rows = bench.onset_rows([*STUDIES, PROBES / "study_cifar10"], 0.8, 0.2, ["*vit*"])
    assert rows and all(r["steps"] > 0 and len(r["onset_step"]) == r["seeds"] for r in rows)
    text = RESULTS_MD.read_text()
    for line in table_lines(bench.markdown(rows, 0.8, 0.2)):
        assert line in text, f"docs/results.md lacks this row of bench/head_onset.py:\n{line}"


@pytest.mark.parametrize(
    "cell", sorted(PROBES.glob("*/*/summary.md")) if PROBES.is_dir() else [], ids=lambda p: p.parent.name
)
def test_single_seed_probes_are_what_the_report_writes(cell):
    """docs/probes: single-seed diagnostic runs (kept out of the >= 3-seed study tables), each summary
    what the report writes from its committed jobs, and quoted in docs/results.md."""
    assert cell.read_text() == summary_markdown(load_sweep(cell.parent))
    assert f"probes/{cell.parent.parent.name}/{cell.parent.name}" in RESULTS_MD.read_text()


def test_results_md_quotes_the_pretraining_only_comparison(monkeypatch):
    """'Fine-tuning': DRLoc during pretraining only is bench/paired_runs.py's pairing of the committed
    fine-tuning runs (all at λ = 0), from the checkpoint pretrained without and with DRLoc."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("paired_runs", ROOT / "bench" / "paired_runs.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    baseline, treatment = Path("studies/study_cifar10/ft5_cvt"), Path("studies/pretrain/ft5_cvt_ptdrloc")
    monkeypatch.chdir(ROOT)  # the table names the dirs relative to the repository root, as the documented command
    row = bench.compare("DRLoc in pretraining only (CvT)", baseline, treatment, {"lambda_drloc": "0"})
    assert len(row["test_acc1"]["delta"]) == 3
    inits = {j.results["init_from"] for j in bench.select(ROOT / treatment, {}).jobs}
    assert len(inits) == 1 and "pretrain5_cvt_drloc" in inits.pop()
    for line in table_lines(bench.markdown([row])):
        assert line in RESULTS_MD.read_text(), f"docs/results.md lacks this row of bench/paired_runs.py:\n{line}"
