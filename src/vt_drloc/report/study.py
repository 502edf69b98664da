"""Study tables: several sweeps side by side, each DRLoc setting against its own baseline.

A study dir holds one sweep dir per *cell* (a model × data setting swept over λ and seeds), e.g.
``studies/study_cifar10/{spc100_vit,spc100_swin,...}/<job>/results.json``.
:func:`write_study` writes into the study dir

* ``study.csv`` / ``study.md``: one row per DRLoc setting (λ > 0) of every cell, beside the λ=0
  baseline of the same cell and setting: model and parameter count, training images, epochs, the
  DRLoc options (target, λ schedule, head), seeds, test top-1 of both (mean ± std), the paired
  per-seed difference DRLoc − baseline (mean ± std) on test and validation, wall time per run;
* ``study.png``: the paired test differences per row, each seed a dot, the mean with its std;
* ``gain_curve.md`` / ``gain_curve.png`` where the study dir holds a ``gain_curve.json`` (and
  ``gain_curve_<name>.md`` / ``.png`` per ``gain_curve_<name>.json``): chosen rows' paired differences
  along an axis (:mod:`vt_drloc.report.gain_curve`).

``python -m vt_drloc.report --study <study dir>`` also rewrites each cell's own summary files
(:func:`vt_drloc.report.summary.write_summary`). Everything is computed from the jobs' ``results.json``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vt_drloc.base.files import EARLIER_DEFAULTS, write_atomic
from vt_drloc.report.figures import new_figure, png_bytes
from vt_drloc.report.gain_curve import gain_curve_markdown, gain_curve_specs, gain_points, load_spec, plot_gain_curve
from vt_drloc.report.markdown import markdown_table
from vt_drloc.report.stats import mean_std, paired_delta, paired_differences
from vt_drloc.report.sweep import (
    LAMBDA_KEY,
    TASK_KEY,
    TASK_TITLE,
    Setting,
    Sweep,
    SweepError,
    find_job_dirs,
    load_sweep,
    natural_key,
)
from vt_drloc.report.tables import delta_text, pct_text, records_task, task_text

STUDY_FILES = ("study.csv", "study.md", "study.png")
# The files of a job worth keeping beside a write-up: what ran and what it scored (no checkpoints,
# no TensorBoard events), a few kB per job.
KEPT_JOB_FILES = (".hydra/overrides.yaml", ".hydra/config.yaml", "results.json", "csv/metrics.csv")


def copy_sweep_results(sweep_dir: str | Path, dest: str | Path) -> list[Path]:
    """Copy ``multirun.yaml`` and each job's :data:`KEPT_JOB_FILES` from ``sweep_dir`` to ``dest``.

    ``dest`` must not exist yet or be empty, so committed results are never overwritten. Returns the
    job folders written."""
    sweep_dir, dest = Path(sweep_dir), Path(dest)
    jobs = find_job_dirs(sweep_dir) if sweep_dir.is_dir() else []
    if not jobs:
        raise SweepError(f"{str(sweep_dir)!r} holds no job folders (<job>/.hydra/overrides.yaml): nothing to copy.")
    if dest.exists() and any(dest.iterdir()):
        raise SweepError(
            f"{str(dest)!r} already holds files; copy into a new or empty folder (nothing was overwritten)."
        )
    written = []
    for job in jobs:
        target = dest / job.relative_to(sweep_dir)
        for name in KEPT_JOB_FILES:
            source = job / name
            if source.is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)
        written.append(target)
    if (sweep_dir / "multirun.yaml").is_file():
        shutil.copy2(sweep_dir / "multirun.yaml", dest / "multirun.yaml")
    return written


# A row whose runs predate an option of EARLIER_DEFAULTS (docs/fidelity.md, issue 13) ran its earlier
# behaviour; it is marked until it is re-run.
DEFAULT_PAIRS = 64  # the paper's m; the options column names m only when a run used another
OLDER_DEFAULT_MARK = "†"


@dataclass
class StudyRow:
    """One DRLoc setting of one cell and its λ=0 baseline."""

    cell: str
    sweep: Sweep
    drloc: Setting
    baseline: Setting

    def _first(self, key: str, setting: Setting | None = None) -> Any:
        jobs = (setting or self.drloc).ok_jobs or (setting or self.drloc).jobs
        return jobs[0].results.get(key) if jobs else None

    @property
    def label(self) -> str:
        """The cell name, plus the setting's other swept values when the cell sweeps more than λ."""
        others = [f"{k}={self.drloc.values[k]}" for k in self.sweep.setting_keys if k != LAMBDA_KEY]
        return self.cell + (f" ({', '.join(others)})" if others else "")

    @property
    def lam(self) -> str:
        return self.drloc.values[LAMBDA_KEY]

    @property
    def options(self) -> str:
        """DRLoc options of the run: target, λ schedule, head, pairs per image (when not 64), loss,
        grid tap, head init, and the stages when not the final grid alone.

        A run recorded before these two options existed ran the older defaults (the grid after the
        final norm, PyTorch's head init); they are shown with :data:`OLDER_DEFAULT_MARK` (values:
        :data:`~vt_drloc.base.files.EARLIER_DEFAULTS`)."""
        opts = self._first("drloc") or {}
        if not isinstance(opts, dict):
            return ""
        hidden = opts.get("hidden_dims", "?")
        parts = [str(opts.get("target", "?")), str(opts.get("schedule", "?"))]
        parts.append("-".join(map(str, hidden)) if isinstance(hidden, list) else str(hidden))  # widths: "256-256"
        pairs = opts.get("num_pairs", opts.get("sample_size", DEFAULT_PAIRS))  # sample_size: its name before 0.2
        if pairs != DEFAULT_PAIRS:
            parts.append(f"m={pairs}")
        parts.append(str(opts.get("mode", "?")))
        for key, label in (("tap_norm", "{}-norm"), ("head_init", "{} init")):
            earlier = label.format(EARLIER_DEFAULTS[key]) + OLDER_DEFAULT_MARK
            parts.append(label.format(opts[key]) if key in opts else earlier)
        if opts.get("stages", "last") != "last":  # multi-scale; runs before the option read the final grid
            parts.append(f"stages={opts['stages']}")
        return ", ".join(parts)

    def paired_test(self) -> list[float]:
        return paired_differences(self.drloc, self.baseline, "test_acc1")

    def values(self) -> dict[str, Any]:
        """The row as raw numbers (fractions, seconds), as written to ``study.csv``."""
        base_test, drl_test = self.baseline.stats("test_acc1"), self.drloc.stats("test_acc1")
        d_test, d_val = (
            paired_delta(self.drloc, self.baseline, "test_acc1"),
            paired_delta(self.drloc, self.baseline, "val_acc1"),
        )
        task_mean, task_std, _ = self.drloc.stats(TASK_KEY)
        return {
            "cell": self.label,
            "model": self._first("model"),
            "backbone_params": self._first("backbone_params"),
            "head_params": self._first("head_params"),
            "train_size": self._first("train_size"),
            "epochs": self._first("epochs"),
            "lambda_drloc": self.lam,
            "drloc_options": self.options,
            "seeds_paired": d_test[2],
            "baseline_test_acc1_mean": base_test[0],
            "baseline_test_acc1_std": base_test[1],
            "drloc_test_acc1_mean": drl_test[0],
            "drloc_test_acc1_std": drl_test[1],
            "delta_test_acc1_mean": d_test[0],
            "delta_test_acc1_std": d_test[1],
            "delta_val_acc1_mean": d_val[0],
            "delta_val_acc1_std": d_val[1],
            "baseline_wall_s": self.baseline.stats("wall_time_s")[0],
            "drloc_wall_s": self.drloc.stats("wall_time_s")[0],
            f"{TASK_KEY}_mean": task_mean,
            f"{TASK_KEY}_std": task_std,
        }


def find_cells(study_dir: Path) -> list[Path]:
    """The sweep dirs directly below ``study_dir`` (folders holding job folders), in natural order."""
    cells = [d for d in study_dir.iterdir() if d.is_dir() and find_job_dirs(d)]
    return sorted(cells, key=lambda d: natural_key(d.name))


def load_study(study_dir: str | Path) -> list[StudyRow]:
    """One :class:`StudyRow` per DRLoc setting with a λ=0 baseline, cell by cell."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise SweepError(
            f"{str(study_dir)!r} is not a folder. Pass a study dir: a folder holding one sweep dir per cell."
        )
    cells = find_cells(study_dir)
    if not cells or any(job.parent == study_dir for job in find_job_dirs(study_dir)):
        raise SweepError(
            f"{str(study_dir)!r} is not a study dir: it must hold sweep dirs (one per cell, each with "
            "<job>/.hydra/overrides.yaml), not job folders. For a single sweep drop --study."
        )
    rows = []
    for cell in cells:
        sweep = load_sweep(cell)
        settings = sweep.settings()
        for setting in settings:
            baseline = sweep.baseline_of(setting, settings)
            if baseline is not None and baseline is not setting:
                rows.append(StudyRow(cell.name, sweep, setting, baseline))
    if not rows:
        raise SweepError(
            f"{str(study_dir)!r}: no cell sweeps drloc.lambda_drloc with a λ=0 baseline, so there is nothing to "
            "compare."
        )
    return rows


def study_csv(rows: list[StudyRow]) -> str:
    """``study.csv``: :meth:`StudyRow.values` per row; numbers exactly as computed (floats as ``repr``), None empty."""
    return pd.DataFrame([row.values() for row in rows], dtype=object).to_csv(index=False, lineterminator="\n")


def _params(value: Any) -> str:
    return f"{value / 1e6:.2f} M" if isinstance(value, (int, float)) and value else "–"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def study_cells(row: StudyRow, with_task: bool) -> dict[str, str]:
    """One row of ``study.md`` as text cells, keyed by the table's header."""
    v = row.values()
    cells = {
        "cell": row.label,
        "model": f"`{v['model']}`",
        "params": f"{_params(v['backbone_params'])} ({_params(v['head_params'])})",
        "train imgs": f"{v['train_size']:,}" if isinstance(v["train_size"], int) else "–",
        "epochs": str(v["epochs"] or "–"),
        "λ": row.lam,
        "DRLoc options": v["drloc_options"],
        "baseline test acc1": pct_text(*row.baseline.stats("test_acc1")[:2]),
        "DRLoc test acc1": pct_text(*row.drloc.stats("test_acc1")[:2]),
        "Δ test acc1": delta_text(paired_delta(row.drloc, row.baseline, "test_acc1")),
        "Δ val acc1": delta_text(paired_delta(row.drloc, row.baseline, "val_acc1")),
    }
    if with_task:
        cells[TASK_TITLE] = task_text(row.drloc)
    cells["wall s / run"] = f"{_seconds(v['baseline_wall_s'])} / {_seconds(v['drloc_wall_s'])}"
    return cells


def study_markdown(rows: list[StudyRow], title: str) -> str:
    # the head-task column appears once a row recorded it (runs before it existed show "–")
    with_task = records_task([job for row in rows for job in row.drloc.jobs])
    lines = [
        f"# Study `{title}`",
        "",
        "Test top-1 in %, mean ± std (sample std) over seeds; Δ = DRLoc − baseline in percentage points, "
        "mean ± std of the per-seed paired differences, n = seeds paired. DRLoc options: target, λ schedule, "
        "head hidden widths, loss, grid tap (before / after the final norm), head init; "
        f"{OLDER_DEFAULT_MARK} = produced by the default before docs/fidelity.md (post-norm tap, PyTorch head init), "
        "not yet re-run with today's. Params: backbone (DRLoc head). Wall: seconds per run, baseline / DRLoc.",
        "",
    ]
    if with_task:
        lines[2] += (
            f" {TASK_TITLE}: the DRLoc runs' last-epoch training DRLoc loss over chance_l1 (near 1: the head "
            "did not learn to localise; – = not recorded by runs before it existed)."
        )
    table = pd.DataFrame([study_cells(row, with_task) for row in rows], dtype=object)
    lines += markdown_table(table)
    lines += [
        "",
        "Per-cell tables and figures: `<cell>/summary.md`, `<cell>/summary.png`, `<cell>/curves.png`; "
        "figure: `study.png`.",
        "",
    ]
    return "\n".join(lines)


def plot_study(rows: list[StudyRow], title: str):
    """``study.png``: paired test top-1 differences per row (dots: seeds; bar: mean ± std)."""
    fig = new_figure(7.5, 0.9 + 0.55 * len(rows))
    ax = fig.subplots()
    for y, row in enumerate(rows):
        diffs = [100 * d for d in row.paired_test()]
        if not diffs:
            continue
        mean, std, _ = mean_std(diffs)
        color = "C2" if mean > 0 else "C3"
        ax.errorbar([mean], [y], xerr=[std or 0.0], fmt="s", color=color, capsize=4, markersize=7)
        ax.scatter(diffs, [y] * len(diffs), color="black", s=12, zorder=3, alpha=0.7)
    ax.axvline(0.0, color="gray", linewidth=1)
    ax.set_yticks(range(len(rows)), [f"{row.label}, λ={row.lam}" for row in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Δ test top-1, DRLoc − baseline (points); dots = seeds, square = mean ± std")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Study {title}: paired difference per seed", fontsize=10)
    return fig


def write_study(study_dir: str | Path, cells_too: bool = True) -> dict[str, Path]:
    """Write ``study.csv``, ``study.md`` and ``study.png`` (and, with ``cells_too``, each cell's summary);
    ``<spec>.md`` / ``<spec>.png`` too for each ``gain_curve*.json`` the study dir holds."""
    from vt_drloc.report.summary import write_summary

    study_dir = Path(study_dir)
    rows = load_study(study_dir)
    if cells_too:
        for cell in find_cells(study_dir):
            write_summary(cell)
    outputs = {
        "study.csv": study_csv(rows).encode(),
        "study.md": study_markdown(rows, study_dir.name).encode(),
        "study.png": png_bytes(plot_study(rows, study_dir.name)),
    }
    for spec_file in gain_curve_specs(study_dir):  # the rows to draw as gain curves, named by the study
        spec = load_spec(spec_file)
        points = gain_points(rows, spec)
        title = spec.get("title", study_dir.name)
        outputs[f"{spec_file.stem}.md"] = gain_curve_markdown(points, title).encode()
        outputs[f"{spec_file.stem}.png"] = png_bytes(plot_gain_curve(points, spec, title))
    paths = {}
    for name, data in outputs.items():
        write_atomic(study_dir / name, data)
        paths[name] = study_dir / name
    return paths


__all__ = [
    "KEPT_JOB_FILES",
    "STUDY_FILES",
    "StudyRow",
    "copy_sweep_results",
    "find_cells",
    "load_study",
    "plot_study",
    "study_csv",
    "study_markdown",
    "write_study",
]
