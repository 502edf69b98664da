"""Sweeps: the summary files of a sweep dir (vt_drloc.sweep / vt_drloc.report), failed jobs in a
multirun, the Optuna search and the launcher configs."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_train import TINY as TRAIN_TINY

from vt_drloc import report
from vt_drloc.report.summary import write_summary
from vt_drloc.report.sweep import SUMMARY_FILES, SweepError, load_sweep
from vt_drloc.report.tables import summary_markdown

# The TINY run of tests/test_train.py (a 2-batch CIFAR-10 run from the archive), without the
# progress bar, which only slows down a captured subprocess.
TINY = [*TRAIN_TINY, "callbacks.rich_progress_bar=null", "callbacks.model_summary=null"]


def without(overrides: list[str], *keys: str) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0] not in keys]


def multirun(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "vt_drloc.train", "-m", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def file_bytes(sweep_dir: Path) -> dict[str, bytes]:
    return {name: (sweep_dir / name).read_bytes() for name in SUMMARY_FILES}


def pct(values: list[float]) -> str:
    """How summary.md prints the mean ± std of accuracies."""
    text = f"{100 * statistics.fmean(values):.2f}"
    return text + (f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else "")


def delta(values: list[float]) -> str:
    text = f"{100 * statistics.fmean(values):+.2f}"
    return text + (f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else "") + f" (n={len(values)})"


def md_rows(markdown: str, n_keys: int | None = None) -> dict[tuple[str, ...], list[str]]:
    """Rows of the settings table of summary.md, keyed by their setting cells (all before 'jobs ok',
    or the first ``n_keys``)."""
    lines = [line for line in markdown.split("## Failed jobs")[0].splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    n_keys = header.index("jobs ok") if n_keys is None else n_keys
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[tuple(cells[:n_keys])] = dict(zip(header, cells))
    return rows


# ------------------------------------------------------------------------- a fabricated sweep dir
def fake_sweep(root: Path, jobs: list[dict], fixed: tuple[str, ...] = ("experiment=quickstart",)) -> Path:
    """A sweep dir as a multirun writes it: ``<n>/.hydra/overrides.yaml``, ``<n>/results.json`` and
    ``<n>/csv/metrics.csv``. Each job: ``overrides`` (dict), ``results`` (dict or None: no
    results.json) and ``curve`` (val/acc1 per epoch)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    for num, job in enumerate(jobs):
        job_dir = root / str(num)
        (job_dir / ".hydra").mkdir(parents=True)
        overrides = [*fixed, *(f"{k}={v}" for k, v in job["overrides"].items())]
        (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        if job.get("results") is not None:
            (job_dir / "results.json").write_text(json.dumps(job["results"], indent=2))
        if job.get("curve"):
            (job_dir / "csv").mkdir()
            lines = ["epoch,step,train/loss_epoch,val/acc1"]
            for epoch, value in enumerate(job["curve"]):
                lines += [f"{epoch},{2 * epoch + 1},,{value}", f"{epoch},{2 * epoch + 1},{2.0 - 0.1 * epoch},"]
            (job_dir / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return root


def fake_results(lam: float, seed: int, val: float, test: float, **extra) -> dict:
    return {
        "status": "ok",
        "model": "vit_tiny_patch16_224",
        "data": "cifar10",
        "seed": seed,
        "lambda_drloc": lam,
        "train_size": 500,
        "epochs": 3,
        "val_acc1": val,
        "val_acc5": min(1.0, val + 0.2),
        "best_val_acc1": val,
        "test_acc1": test,
        "test_acc5": min(1.0, test + 0.25),
        "wall_time_s": 10.0 + seed,
        "images_per_s": 100.0,
        **extra,
    }


def example_sweep(root: Path) -> tuple[Path, dict]:
    """λ ∈ {0, 0.1, 0.5} × samples_per_class ∈ {50, 100} × seed ∈ {0, 1, 2}; (0.5, 100, seed 2) fails,
    (0.1, 50, seed 1) left no results.json. Returns the dir and {(λ, n, seed): (val, test)} of the ok jobs."""
    jobs, truth = [], {}
    for n in (50, 100):
        for lam in ("0", "0.1", "0.5"):
            for seed in (0, 1, 2):
                val = 0.30 + 0.1 * float(lam) + 0.001 * n + 0.01 * seed + (0.003 if seed == 1 else 0.0)
                test = val - 0.02 + 0.004 * seed * float(lam)
                overrides = {"data.samples_per_class": n, "drloc.lambda_drloc": lam, "seed": seed}
                curve = [val - 0.1, val - 0.05, val]
                if (lam, n, seed) == ("0.5", 100, 2):
                    results = {
                        "status": "failed",
                        "error": "FloatingPointError: loss is nan\nTraceback ...",
                        "seed": seed,
                    }
                elif (lam, n, seed) == ("0.1", 50, 1):
                    results = None
                else:
                    results = fake_results(float(lam), seed, val, test)
                    truth[(lam, n, seed)] = (val, test)
                jobs.append({"overrides": overrides, "results": results, "curve": curve})
    return fake_sweep(root, jobs), truth


def test_summary_files_of_a_fabricated_sweep(tmp_path):
    sweep_dir, truth = example_sweep(tmp_path / "sweep")
    paths = write_summary(sweep_dir)
    assert sorted(paths) == sorted(SUMMARY_FILES) and all((sweep_dir / f).stat().st_size > 0 for f in SUMMARY_FILES)
    for name in ("summary.png", "curves.png"):
        assert (sweep_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    sweep = load_sweep(sweep_dir)
    assert sweep.swept == ["data.samples_per_class", "drloc.lambda_drloc", "seed"]
    assert sweep.fixed == {"experiment": "quickstart"}
    assert sweep.x_key == "drloc.lambda_drloc" and sweep.group_keys == ["data.samples_per_class"]

    # summary.csv: one row per job, in job order, numbers exactly as in results.json
    rows = read_csv(sweep_dir / "summary.csv")
    assert len(rows) == 18 and [r["job"] for r in rows] == [str(i) for i in range(18)]
    assert list(rows[0])[:5] == ["job", "status", "data.samples_per_class", "drloc.lambda_drloc", "seed"]
    assert [r["status"] for r in rows].count("failed") == 2
    for row in rows:
        key = (row["drloc.lambda_drloc"], int(row["data.samples_per_class"]), int(row["seed"]))
        if key in truth:
            assert row["status"] == "ok" and row["error"] == ""
            assert float(row["val_acc1"]) == truth[key][0] and float(row["test_acc1"]) == truth[key][1]
        else:
            assert row["status"] == "failed" and row["val_acc1"] == ""
    failed = {r["job"]: r["error"] for r in rows if r["status"] == "failed"}
    assert failed["17"] == "FloatingPointError: loss is nan"  # first line only
    assert "no results.json" in failed["4"]

    # summary.md: mean ± std over seeds, paired per-seed delta vs λ=0 of the same data size
    markdown = (sweep_dir / "summary.md").read_text()
    table = md_rows(markdown)
    assert list(table) == [(n, lam) for n in ("50", "100") for lam in ("0", "0.1", "0.5")]
    for (n, lam), row in table.items():
        seeds = [s for s in (0, 1, 2) if (lam, int(n), s) in truth]
        assert row["jobs ok"] == f"{len(seeds)}/3"
        assert row["val acc1"] == pct([truth[(lam, int(n), s)][0] for s in seeds])
        assert row["test acc1"] == pct([truth[(lam, int(n), s)][1] for s in seeds])
        if lam == "0":
            assert row["Δ test acc1"] == "baseline"
        else:
            paired = [s for s in seeds if ("0", int(n), s) in truth]
            diffs = [truth[(lam, int(n), s)][1] - truth[("0", int(n), s)][1] for s in paired]
            assert row["Δ test acc1"] == delta(diffs)
            val_diffs = [truth[(lam, int(n), s)][0] - truth[("0", int(n), s)][0] for s in paired]
            assert row["Δ val acc1"] == delta(val_diffs)
    assert table[("50", "0.1")]["Δ test acc1"].endswith("(n=2)")
    assert table[("100", "0.5")]["Δ test acc1"].endswith("(n=2)")
    assert "## Failed jobs" in markdown and "FloatingPointError: loss is nan" in markdown
    assert "`experiment=quickstart`" in markdown


def test_report_cli_rewrites_identical_files_and_refuses_a_non_sweep(tmp_path, capsys):
    sweep_dir, _ = example_sweep(tmp_path / "sweep")
    assert report.main([str(sweep_dir)]) == 0
    first = file_bytes(sweep_dir)
    assert "| 50 | 0.1 | 2/3 |" in capsys.readouterr().out
    assert report.main([str(sweep_dir), "--quiet"]) == 0
    assert file_bytes(sweep_dir) == first

    job_dir = sweep_dir / "0"
    assert report.main([str(job_dir)]) == 2
    assert "holds no job folders" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing")]) == 2


def test_sweep_without_lambda_or_curves(tmp_path):
    """A sweep over a non-λ key, no CSV logs, one seed: no Δ columns, x axis = that key, figures still drawn."""
    jobs = [
        {"overrides": {"model": m}, "results": fake_results(0.1, 0, v, v)}
        for m, v in (("vit_tiny_c32", 0.4), ("cvt_13_c32", 0.5))
    ]
    sweep_dir = fake_sweep(tmp_path / "sweep", jobs)
    write_summary(sweep_dir)
    sweep = load_sweep(sweep_dir)
    assert sweep.x_key == "model" and sweep.group_keys == []
    markdown = summary_markdown(sweep)
    assert "Δ" not in markdown and "| cvt_13_c32 | 1/1 | 50.00 |" in markdown
    assert (sweep_dir / "curves.png").stat().st_size > 0


# ------------------------------------------------------------------------- configs
def compose_hydra(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vt_drloc.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_optuna_search_composes():
    cfg = compose_hydra(["hparams_search=drloc_optuna", "experiment=quickstart"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"drloc.lambda_drloc", "drloc.num_pairs"}
    assert sweeper.params["drloc.lambda_drloc"].startswith("interval(")
    assert sweeper.params["drloc.num_pairs"].startswith("choice(")
    assert sweeper.max_failure_rate == 1.0 and sweeper.sampler.seed == cfg.seed
    assert cfg.task_name == "quickstart"  # the experiment still applies
    assert cfg.hydra.callbacks.sweep_summary._target_ == "vt_drloc.report.SweepSummary"
    # the search space parses the way the sweeper parses it
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    parser = OverridesParser.create()
    for key, value in sweeper.params.items():
        create_optuna_distribution_from_override(parser.parse_override(f"{key}={value}"))


@pytest.mark.parametrize("launcher", ["local_parallel", "slurm"])
def test_launcher_configs_compose_and_instantiate(launcher):
    cfg = compose_hydra([f"hydra/launcher={launcher}", "hparams_search=drloc_optuna", "hydra.sweep.dir=/sweeps/x"])
    target = cfg.hydra.launcher._target_
    assert target.endswith("JoblibLauncher" if launcher == "local_parallel" else "SlurmLauncher")
    instance = instantiate(cfg.hydra.launcher)  # the plugin's own constructor
    assert type(instance).__name__ == target.rsplit(".", 1)[1]
    # base config still the grid sweeper / the Optuna one: the launcher choice is independent
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")


def test_slurm_launcher_writes_a_valid_sbatch_script(tmp_path, monkeypatch):
    """What the submitit launcher would submit, generated without a cluster (a stand-in srun on PATH)."""
    submitit = pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_hydra(
        [
            "hydra/launcher=slurm",
            "trainer=gpu",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.timeout_min=90",
            "hydra.launcher.array_parallelism=4",
            "+hydra.launcher.additional_parameters.mail-type=END",
        ]
    )
    params = dict(instantiate(cfg.hydra.launcher).params)
    # the same steps as hydra_submitit_launcher's BaseSubmititLauncher.launch
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=params["submitit_folder"], slurm_max_num_timeout=params["max_num_timeout"]
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{
            k if k in base else f"slurm_{k}": v
            for k, v in params.items()
            if k not in ("submitit_folder", "max_num_timeout")
        }
    )
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit /job", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --job-name=train",
        "#SBATCH --mail-type=END",
    ):
        assert line in script, line
    assert str(tmp_path / "sweep" / ".submitit") in script


# ------------------------------------------------------------------------- real multiruns
@pytest.mark.slow
def test_two_by_two_multirun_writes_summary_matching_results(tmp_path, cifar10_tar):
    sweep_dir = tmp_path / "sweep"
    run = multirun([*TINY, "drloc.lambda_drloc=0,0.1", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in SUMMARY_FILES:
        assert (sweep_dir / name).is_file(), name
    assert "4 jobs, 0 failed" in run.stdout

    results = {}
    for job in range(4):
        overrides = yaml.safe_load((sweep_dir / str(job) / ".hydra" / "overrides.yaml").read_text())
        res = json.loads((sweep_dir / str(job) / "results.json").read_text())
        assert res["status"] == "ok"
        lam = next(o.split("=")[1] for o in overrides if o.startswith("drloc.lambda_drloc="))
        results[(lam, res["seed"])] = res
    assert sorted(results) == [("0", 0), ("0", 1), ("0.1", 0), ("0.1", 1)]

    rows = read_csv(sweep_dir / "summary.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        res = results[(row["drloc.lambda_drloc"], int(row["seed"]))]
        for key in ("val_acc1", "val_acc5", "best_val_acc1", "test_acc1", "test_acc5", "wall_time_s"):
            assert float(row[key]) == res[key], key
        assert int(row["train_size"]) == res["train_size"]

    table = md_rows((sweep_dir / "summary.md").read_text())
    assert list(table) == [("0",), ("0.1",)]
    for (lam,), row in table.items():
        assert row["jobs ok"] == "2/2"
        for key, title in (("val_acc1", "val acc1"), ("test_acc1", "test acc1"), ("test_acc5", "test acc5")):
            assert row[title] == pct([results[(lam, s)][key] for s in (0, 1)])
    assert table[("0",)]["Δ test acc1"] == "baseline"
    assert table[("0.1",)]["Δ test acc1"] == delta(
        [results[("0.1", s)]["test_acc1"] - results[("0", s)]["test_acc1"] for s in (0, 1)]
    )
    assert table[("0.1",)]["Δ val acc1"] == delta(
        [results[("0.1", s)]["val_acc1"] - results[("0", s)]["val_acc1"] for s in (0, 1)]
    )

    # the curves come from the jobs' CSV logs
    sweep = load_sweep(sweep_dir)
    assert all(len(job.curve()) == 1 for job in sweep.jobs)

    # the report rewrites the very same files, figures included
    written = file_bytes(sweep_dir)
    again = subprocess.run(
        [sys.executable, "-m", "vt_drloc.report", str(sweep_dir), "-q"], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert file_bytes(sweep_dir) == written


@pytest.mark.slow
def test_failing_and_nan_jobs_are_recorded_and_the_sweep_goes_on(tmp_path, cifar10_tar):
    """Under the joblib launcher: num_heads=3 raises inside the job (32 channels do not split in 3 heads);
    lr=1e30 trains to NaN losses. Both are recorded as failed; the good job and the summary still come."""
    sweep_dir = tmp_path / "sweep"
    args = [
        *without(TINY, "model.kwargs.num_heads"),
        "hydra/launcher=local_parallel",
        "hydra.launcher.n_jobs=2",
        "model.kwargs.num_heads=2,3",
        "optim.lr=0.001,1e30",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    run = multirun(args, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {(r["model.kwargs.num_heads"], r["optim.lr"]): r for r in read_csv(sweep_dir / "summary.csv")}
    assert len(rows) == 4
    assert rows[("2", "0.001")]["status"] == "ok"
    nan_job = rows[("2", "1e+30")]
    assert nan_job["status"] == "failed" and "non-finite" in nan_job["error"] and "nan" in nan_job["error"]
    for lr in ("0.001", "1e+30"):
        assert rows[("3", lr)]["status"] == "failed" and rows[("3", lr)]["error"].startswith("AssertionError")
    # each failed job left its own results.json with the error (and a traceback for exceptions)
    failed = json.loads((sweep_dir / rows[("3", "0.001")]["job"] / "results.json").read_text())
    assert failed["status"] == "failed" and "Traceback" in failed["traceback"] and failed["seed"] == 0
    markdown = (sweep_dir / "summary.md").read_text()
    assert "4 jobs: 1 ok, 3 failed" in markdown and "## Failed jobs" in markdown


@pytest.mark.slow
def test_optuna_search_runs_and_maximises_val_acc1(tmp_path, cifar10_tar):
    sweep_dir = tmp_path / "optuna"
    args = [
        *without(TINY, "drloc.num_pairs"),
        "hparams_search=drloc_optuna",
        "hydra.sweeper.n_trials=2",
        "drloc.num_pairs=choice(4,8)",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "vt_drloc.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    values = [json.loads((sweep_dir / str(j) / "results.json").read_text())["best_val_acc1"] for j in range(2)]
    assert math.isclose(best["best_value"], max(values))
    rows = read_csv(sweep_dir / "summary.csv")
    assert len(rows) == 2 and all(0.0 <= float(r["drloc.lambda_drloc"]) <= 1.0 for r in rows)
    assert "Optuna best" in (sweep_dir / "summary.md").read_text()


# ------------------------------------------------------------------------- a study of several cells
def test_study_tables_pair_each_drloc_setting_with_its_own_cells_baseline(tmp_path, capsys):
    """Two cells (different models, λ 0.1 vs 0.5, one with a failed DRLoc seed) -> one row each, the
    numbers those of the cells' results.json; the CLI also rewrites the cells' summaries."""
    study = tmp_path / "study_x"
    truth = {}
    for cell, lam, model in (("b_swin", "0.5", "swin"), ("a_vit", "0.1", "vit")):
        jobs = []
        for lam_value in ("0", lam):
            for seed in (0, 1, 2):
                test = 0.30 + (0.05 if model == "swin" else 0.0) + 0.01 * seed + (0.02 * seed * float(lam_value))
                extra = {
                    "backbone_params": 1_200_000,
                    "head_params": 400_000 if lam_value != "0" else 0,
                    "drloc": {"target": "abs", "schedule": "warmup_decay", "hidden_dims": "released", "mode": "l1"},
                }
                results = fake_results(float(lam_value), seed, test + 0.01, test, model=model, **extra)
                if (cell, lam_value, seed) == ("b_swin", lam, 2):
                    results = {"status": "failed", "error": "killed", "seed": seed}
                else:
                    truth[(cell, lam_value, seed)] = test
                jobs.append({"overrides": {"drloc.lambda_drloc": lam_value, "seed": seed}, "results": results})
        fake_sweep(study / cell, jobs, fixed=("experiment=study_cifar10", f"model={model}"))

    from vt_drloc.report.study import STUDY_FILES, load_study

    rows = load_study(study)
    assert [(r.cell, r.lam) for r in rows] == [("a_vit", "0.1"), ("b_swin", "0.5")]
    assert report.main(["--study", str(study)]) == 0
    out = capsys.readouterr().out
    for name in STUDY_FILES:
        assert (study / name).stat().st_size > 0
    assert (study / "study.png").read_bytes()[:4] == b"\x89PNG"
    for cell in ("a_vit", "b_swin"):
        assert all((study / cell / name).is_file() for name in SUMMARY_FILES)

    csv_rows = {r["cell"]: r for r in read_csv(study / "study.csv")}
    table = md_rows((study / "study.md").read_text(), n_keys=1)
    assert out.count("| a_vit |") == 1 and out.count("| b_swin |") == 1
    for cell, lam in (("a_vit", "0.1"), ("b_swin", "0.5")):
        seeds = [s for s in (0, 1, 2) if (cell, lam, s) in truth]
        diffs = [truth[(cell, lam, s)] - truth[(cell, "0", s)] for s in seeds]
        row = csv_rows[cell]
        assert row["lambda_drloc"] == lam and int(row["seeds_paired"]) == len(seeds)
        assert math.isclose(float(row["delta_test_acc1_mean"]), statistics.fmean(diffs), abs_tol=1e-12)
        assert math.isclose(
            float(row["baseline_test_acc1_mean"]),
            statistics.fmean(truth[(cell, "0", s)] for s in (0, 1, 2)),
            abs_tol=1e-12,
        )
        # the runs record no tap_norm / head_init: they ran the defaults before docs/fidelity.md, marked †
        assert (
            row["drloc_options"] == "abs, warmup_decay, released, l1, post-norm†, torch init†"
            and row["train_size"] == "500"
        )
        md = table[(cell,)]
        assert md["Δ test acc1"] == delta(diffs)
        assert md["DRLoc test acc1"] == pct([truth[(cell, lam, s)] for s in seeds])
        assert md["params"] == "1.20 M (0.40 M)"
    assert csv_rows["b_swin"]["seeds_paired"] == "2"

    # a single sweep dir, or a folder without cells, is refused with a pointer to the right use
    assert report.main(["--study", str(study / "a_vit")]) == 2
    assert "not a study dir" in capsys.readouterr().err
    assert report.main(["--study", str(tmp_path / "nope")]) == 2


def test_copy_to_keeps_the_light_files_and_never_overwrites(tmp_path, capsys):
    sweep_dir, truth = example_sweep(tmp_path / "sweep")
    (sweep_dir / "0" / "checkpoints").mkdir()
    (sweep_dir / "0" / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (sweep_dir / "0" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    dest = tmp_path / "docs" / "cell"
    assert report.main([str(sweep_dir), "--copy-to", str(dest), "--quiet"]) == 0
    assert (
        not (dest / "0" / "checkpoints").exists() and (dest / "0" / ".hydra" / "config.yaml").read_text() == "seed: 0\n"
    )
    assert (dest / "multirun.yaml").is_file() and (dest / "0" / "csv" / "metrics.csv").is_file()
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == sorted(str(i) for i in range(18))
    # the report written at DEST equals the one of the source sweep (same jobs, same numbers)
    write_summary(sweep_dir)
    assert (dest / "summary.csv").read_text() == (sweep_dir / "summary.csv").read_text()
    before = (dest / "summary.md").read_bytes()
    assert report.main([str(sweep_dir), "--copy-to", str(dest)]) == 2
    assert "already holds files" in capsys.readouterr().err and (dest / "summary.md").read_bytes() == before


def test_one_set_of_baselines_serves_drloc_runs_that_sweep_other_drloc_options(tmp_path):
    """λ=0 builds no head, so a baseline that differs from a DRLoc setting only in drloc.* keys pairs
    with it; an exact match wins; a baseline with another non-DRLoc value never does."""
    jobs = []
    for seed in (0, 1, 2):
        jobs.append(
            {
                "overrides": {"drloc.lambda_drloc": "0", "seed": seed},
                "results": fake_results(0.0, seed, 0.3, 0.3 + 0.01 * seed),
            }
        )
        for tap in ("pre", "post"):
            jobs.append(
                {
                    "overrides": {"drloc.lambda_drloc": "0.1", "drloc.tap_norm": tap, "seed": seed},
                    "results": fake_results(
                        0.1,
                        seed,
                        0.4,
                        0.35 + 0.01 * seed + (0.02 if tap == "pre" else 0.0),
                        drloc={
                            "target": "abs",
                            "schedule": "constant",
                            "hidden_dims": "released",
                            "mode": "l1",
                            "tap_norm": tap,
                            "head_init": "released",
                        },
                    ),
                }
            )
    sweep = load_sweep(fake_sweep(tmp_path / "cell", jobs))
    settings = sweep.settings()
    by_tap = {s.values["drloc.tap_norm"]: s for s in settings}
    assert set(by_tap) == {"", "pre", "post"}
    assert sweep.baseline_of(by_tap["pre"], settings) is by_tap[""] is sweep.baseline_of(by_tap["post"], settings)
    table = md_rows(summary_markdown(sweep), n_keys=2)
    assert table[("0.1", "pre")]["Δ test acc1"] == delta([0.07, 0.07, 0.07])
    assert table[("0.1", "post")]["Δ test acc1"] == delta([0.05, 0.05, 0.05])

    from vt_drloc.report.study import load_study

    rows = load_study(tmp_path)
    assert {r.options for r in rows} == {
        "abs, constant, released, l1, pre-norm, released init",
        "abs, constant, released, l1, post-norm, released init",
    }
    # a baseline of another model is no baseline for these runs
    other = [
        {
            "overrides": {"drloc.lambda_drloc": "0", "model": "swin", "seed": 0},
            "results": fake_results(0.0, 0, 0.3, 0.3),
        },
        {
            "overrides": {"drloc.lambda_drloc": "0.1", "model": "vit", "seed": 0},
            "results": fake_results(0.1, 0, 0.3, 0.3),
        },
    ]
    sweep = load_sweep(fake_sweep(tmp_path / "other", other))
    assert sweep.baseline_of(sweep.settings()[-1], sweep.settings()) is None


def test_head_task_fraction_is_a_column_once_runs_record_it(tmp_path):
    """summary.md / summary.csv / study.md show the last-epoch DRLoc loss / chance where the runs recorded
    it (mean ± std over seeds), "–" for runs from before it existed; older sweeps keep their tables."""
    from vt_drloc.report.study import load_study, study_markdown

    def cell(name: str, record: bool) -> Path:
        jobs = []
        for seed, ratio in zip((0, 1, 2), (0.4, 0.5, 0.6)):
            jobs.append(
                {"overrides": {"drloc.lambda_drloc": "0", "seed": seed}, "results": fake_results(0.0, seed, 0.3, 0.3)}
            )
            extra = {"drloc_final_over_chance": ratio} if record else {}
            jobs.append(
                {
                    "overrides": {"drloc.lambda_drloc": "0.1", "seed": seed},
                    "results": fake_results(0.1, seed, 0.3, 0.31, **extra),
                }
            )
        return fake_sweep(tmp_path / "study" / name, jobs)

    new, old = cell("a_new", True), cell("b_old", False)
    table = md_rows(summary_markdown(load_sweep(new)), n_keys=1)
    assert table[("0.1",)]["DRLoc L1 / chance"] == "0.50 ± 0.10" and table[("0",)]["DRLoc L1 / chance"] == "–"
    assert "DRLoc L1 / chance" not in summary_markdown(load_sweep(old))
    write_summary(new)
    assert [
        r["drloc_final_over_chance"] for r in read_csv(new / "summary.csv") if r["drloc.lambda_drloc"] == "0.1"
    ] == [
        "0.4",
        "0.5",
        "0.6",
    ]
    study = md_rows(study_markdown(load_study(tmp_path / "study"), "study"), n_keys=1)
    assert study[("a_new",)]["DRLoc L1 / chance"] == "0.50 ± 0.10" and study[("b_old",)]["DRLoc L1 / chance"] == "–"


def test_summary_png_shows_every_job_the_seed_count_and_the_paired_difference_at_scale():
    from vt_drloc.report.figures import MIN_SPAN_PCT, plot_summary
    from vt_drloc.report.stats import paired_delta

    cell = Path(__file__).resolve().parents[1] / "studies" / "study_cifar10" / "spc100_vit_lam1_wd"
    sweep = load_sweep(cell)
    fig = plot_summary(sweep)
    val, test, delta = fig.axes
    for ax in (val, test):  # every job a point, the mean a marker: 6 jobs, 2 settings
        low, high = ax.get_ylim()
        assert high - low >= MIN_SPAN_PCT
        assert (
            sum(
                len(c.get_offsets())
                for c in ax.collections
                if hasattr(c, "get_offsets") and c.get_offsets().ndim == 2 and len(c.get_offsets()) == 3
            )
            >= 2 * 3
        )
        assert [t.get_text() for t in ax.texts].count("n=3") == 2
    settings = sweep.settings()
    drloc = next(s for s in settings if s.values["drloc.lambda_drloc"] == "1")
    mean, _, n = paired_delta(drloc, sweep.baseline_of(drloc, settings), "test_acc1")
    markers = [line for line in delta.get_lines() if line.get_marker() == "D"]
    assert len(markers) == 1 and abs(markers[0].get_ydata()[0] - 100 * mean) < 1e-9 and n == 3
    assert any(list(line.get_ydata()) == [0.0, 0.0] for line in delta.get_lines())  # the zero line
    assert "paired by seed" in delta.get_title()
    # the copied-in baselines did not set drloc.schedule: the legend says so instead of "drloc.schedule="
    legend = sorted(t.get_text() for t in fig.legends[0].get_texts())
    assert legend == ["drloc.schedule=(not set)", "drloc.schedule=warmup_decay"]


def test_study_options_name_head_widths_a_non_default_pair_count_and_stages(tmp_path):
    from vt_drloc.report.study import load_study

    opts = {"target": "abs", "schedule": "warmup_decay", "mode": "l1", "tap_norm": "pre", "head_init": "released"}
    # the pair count as runs record it today (num_pairs) and before 0.2 (sample_size); multi-scale stages
    variants = {
        "16": ([256, 256], {"num_pairs": 16, "stages": "last"}),
        "32": ("released", {"sample_size": 32}),
        "64": ("released", {"num_pairs": 64, "stages": "all"}),
    }
    jobs = []
    for seed in (0, 1):
        jobs.append(
            {"overrides": {"drloc.lambda_drloc": "0", "seed": seed}, "results": fake_results(0.0, seed, 0.3, 0.3)}
        )
        for m, (widths, extra) in variants.items():
            drloc = {**opts, "hidden_dims": widths, **extra}
            jobs.append(
                {
                    "overrides": {"drloc.lambda_drloc": "1", "drloc.num_pairs": m, "seed": seed},
                    "results": fake_results(1.0, seed, 0.4, 0.4, drloc=drloc),
                }
            )
    load_sweep(fake_sweep(tmp_path / "cell", jobs))
    assert sorted(r.options for r in load_study(tmp_path)) == [
        "abs, warmup_decay, 256-256, m=16, l1, pre-norm, released init",
        "abs, warmup_decay, released, l1, pre-norm, released init, stages=all",
        "abs, warmup_decay, released, m=32, l1, pre-norm, released init",
    ]


def test_gain_curve_draws_the_rows_a_study_names_from_their_paired_seeds(tmp_path):
    """gain_curve.json names study rows per x value; gain_curve.md holds their paired Δ and the figure is
    written; a row the study lacks is a clear error naming the rows it has."""
    study = tmp_path / "study"
    for cell, gains in (("spc100", (0.05, 0.04, 0.06)), ("spc500", (0.07, 0.08, 0.06))):
        jobs = []
        for seed, gain in enumerate(gains):
            jobs.append(
                {
                    "overrides": {"drloc.lambda_drloc": "0", "seed": seed},
                    "results": fake_results(0.0, seed, 0.3, 0.30 + 0.01 * seed),
                }
            )
            jobs.append(
                {
                    "overrides": {"drloc.lambda_drloc": "1", "seed": seed},
                    "results": fake_results(1.0, seed, 0.3, 0.30 + 0.01 * seed + gain),
                }
            )
        fake_sweep(study / cell, jobs)
    spec = {
        "title": "toy",
        "panels": [{"x": "images per class", "series": {"λ 1": {"500": "spc500", "100": "spc100"}}}],
    }
    (study / "gain_curve.json").write_text(json.dumps(spec))
    assert report.main(["--study", str(study), "-q"]) == 0
    assert (study / "gain_curve.png").read_bytes().startswith(b"\x89PNG")
    rows = [
        line.split("|")[1:-1]
        for line in (study / "gain_curve.md").read_text().splitlines()
        if line.startswith("| images")
    ]
    assert [(r[2].strip(), r[3].strip(), r[6].strip()) for r in rows] == [
        ("100", delta([0.05, 0.04, 0.06]), "spc100"),
        ("500", delta([0.07, 0.08, 0.06]), "spc500"),
    ]
    # a second question gets its own figure and table from gain_curve_<name>.json; the first is kept
    other = {"title": "other", "panels": [{"x": "epochs", "series": {"λ 1": {"30": "spc500"}}}]}
    (study / "gain_curve_epochs.json").write_text(json.dumps(other))
    first = (study / "gain_curve.md").read_text()
    assert report.main(["--study", str(study), "-q"]) == 0
    assert (study / "gain_curve.md").read_text() == first
    assert (study / "gain_curve_epochs.png").read_bytes().startswith(b"\x89PNG")
    epochs = (study / "gain_curve_epochs.md").read_text()
    assert "# Gain curve: other" in epochs and f"| epochs | λ 1 | 30 | {delta([0.07, 0.08, 0.06])} |" in epochs
    (study / "gain_curve_epochs.json").unlink()
    spec["panels"][0]["series"]["λ 1"]["2000"] = "spc2000"
    (study / "gain_curve.json").write_text(json.dumps(spec))
    assert report.main(["--study", str(study), "-q"]) == 2
    from vt_drloc.report.study import write_study

    with pytest.raises(SweepError, match=r"names row 'spc2000' at images per class=2000.*rows: spc100, spc500"):
        write_study(study)


def test_gain_curve_tells_apart_the_lambdas_of_one_cell(tmp_path):
    """A cell that swept several λ has one row per λ: its bare name is refused as ambiguous (it used to
    pick one silently) and ``"<cell>, λ=<λ>"`` (the spelling of study.png) picks the row."""
    study = tmp_path / "study"
    jobs = []
    for seed in range(2):
        for lam, gain in (("0", 0.0), ("0.1", 0.01), ("0.5", 0.03)):
            jobs.append(
                {
                    "overrides": {"drloc.lambda_drloc": lam, "seed": seed},
                    "results": fake_results(float(lam), seed, 0.3, 0.30 + 0.01 * seed + gain),
                }
            )
    fake_sweep(study / "vit", jobs)
    spec = {"title": "toy", "panels": [{"x": "epochs", "series": {"paper": {"30": "vit"}}}]}
    (study / "gain_curve.json").write_text(json.dumps(spec))
    from vt_drloc.report.study import write_study

    with pytest.raises(
        SweepError,
        match=r"names row 'vit' at epochs=30, which names more than one row; rows: 'vit, λ=0.1', 'vit, λ=0.5'",
    ):
        write_study(study)
    spec["panels"][0]["series"]["paper"]["30"] = "vit, λ=0.5"
    (study / "gain_curve.json").write_text(json.dumps(spec))
    write_study(study)
    rows = [
        line.split("|")[1:-1]
        for line in (study / "gain_curve.md").read_text().splitlines()
        if line.startswith("| epochs")
    ]
    assert [(r[3].strip(), r[5].strip()) for r in rows] == [(delta([0.03, 0.03]), "0.5")]


def test_gain_curve_panels_each_name_the_series_they_draw(tmp_path):
    """A series drawn in the second panel only (e.g. the paper's λ on the epoch axis) is in that
    panel's legend, not missing from the figure."""
    from vt_drloc.report.gain_curve import plot_gain_curve

    points = [
        {"panel": "images", "series": "λ 1", "x": 100.0, "row": None, "diffs": [5.0, 4.0, 6.0]},
        {"panel": "epochs", "series": "λ 1", "x": 30.0, "row": None, "diffs": [5.0, 4.0, 6.0]},
        {"panel": "epochs", "series": "paper", "x": 30.0, "row": None, "diffs": [1.0, 0.5, 0.0]},
    ]
    spec = {"panels": [{"x": "images", "series": {}}, {"x": "epochs", "series": {}}]}
    fig = plot_gain_curve(points, spec, "toy")
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert legends == [["λ 1"], ["λ 1", "paper"]]
