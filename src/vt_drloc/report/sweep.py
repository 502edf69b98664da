"""Sweep summaries: from a multirun folder to a table and two figures.

A Hydra multirun (``python -m vt_drloc.train -m drloc.lambda_drloc=0,0.1,0.5 seed=0,1,2``) writes
one folder per job below its sweep dir, each with ``.hydra/overrides.yaml`` and ``results.json``
(status ``ok`` or ``failed``). :func:`write_summary` turns the sweep dir into

* ``summary.csv``: one row per job (swept values, val/test acc1/acc5, wall time, status, error);
* ``summary.md``: mean ± std over seeds per setting (the swept values except ``seed``) and, when
  ``drloc.lambda_drloc`` is swept, the change vs the λ=0 baseline of the same setting, computed as
  the mean ± std of the per-seed paired differences;
* ``summary.png``: accuracy vs λ (or vs the first swept key) with error bars, one line per
  combination of the other swept keys;
* ``curves.png``: val/acc1 per epoch (from the CSV logger), baseline vs DRLoc.

It runs at the end of every multirun (the :class:`SweepSummary` Hydra callback of
``conf/hydra/default.yaml``) and on demand: ``python -m vt_drloc.report <sweep dir>``.
Figures are drawn with matplotlib's Agg canvas, never pyplot, so this works headless and does not
change the backend of a notebook that imports it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vt_drloc.files import write_atomic
from vt_drloc.results import final_metrics, non_finite_metrics

log = logging.getLogger("vt_drloc.report")

SUMMARY_FILES = ("summary.csv", "summary.md", "summary.png", "curves.png")
LAMBDA_KEY = "drloc.lambda_drloc"
SEED_KEY = "seed"
# results.json fields copied into summary.csv, after the swept values.
RESULT_COLUMNS = (
    "seed",
    "lambda_drloc",
    "model",
    "data",
    "train_size",
    "epochs",
    "val_acc1",
    "val_acc5",
    "best_val_acc1",
    "test_acc1",
    "test_acc5",
    "wall_time_s",
    "images_per_s",
)
# (results.json key, column title) of the accuracies aggregated in summary.md.
SUMMARY_METRICS = (("val_acc1", "val acc1"), ("test_acc1", "test acc1"), ("test_acc5", "test acc5"))
DELTA_METRICS = (("val_acc1", "Δ val acc1"), ("test_acc1", "Δ test acc1"))
# Did the head learn its task? The last epoch's training DRLoc loss / chance_l1 (vt_drloc.drloc.task_record):
# a column of summary.csv / summary.md / study.md wherever a job recorded it (runs since it exists).
TASK_KEY, TASK_TITLE = "drloc_final_over_chance", "DRLoc L1 / chance"
CURVE_METRIC = "val/acc1"


class SweepError(Exception):
    """The folder is not a sweep dir (no job folders with ``.hydra/overrides.yaml``)."""


# ---------------------------------------------------------------------------------- values
def parse_value(text: str) -> Any:
    """An override value as YAML reads it (``0.1`` -> 0.1, ``[32]`` -> [32]); the text if it does not parse."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def as_number(text: str | None) -> float | None:
    value = parse_value(text) if isinstance(text, str) else text
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def natural_key(text: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def _value_key(text: str) -> tuple:
    """Sort key of override values: numbers numerically, before other values."""
    number = as_number(text)
    return (0, number, "") if number is not None else (1, 0.0, text)


def split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~").removeprefix("override ").strip(), value


# ---------------------------------------------------------------------------------- jobs
def read_curve(job_dir: Path, metric: str = CURVE_METRIC) -> list[tuple[int, float]]:
    """``(epoch, value)`` of ``metric`` from the job's CSV logger (``**/metrics.csv``), last value per epoch."""
    files = sorted(job_dir.rglob("metrics.csv"))
    if not files:
        return []
    by_epoch: dict[int, float] = {}
    with files[0].open(newline="") as handle:
        for row in csv.DictReader(handle):
            text, epoch = row.get(metric), row.get("epoch")
            if text in (None, "") or epoch in (None, ""):
                continue
            by_epoch[int(float(epoch))] = float(text)
    return sorted(by_epoch.items())


@dataclass
class Job:
    """One job folder of a sweep: its command-line overrides and its ``results.json``."""

    name: str
    path: Path
    overrides: dict[str, str]
    results: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.results.get("status", "failed"))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def error(self) -> str:
        return str(self.results.get("error") or "")

    @property
    def seed(self) -> Any:
        if "seed" in self.results:
            return self.results["seed"]
        return parse_value(self.overrides[SEED_KEY]) if SEED_KEY in self.overrides else None

    def metric(self, key: str) -> float | None:
        """A finite value of ``results[key]`` of a successful job, else None."""
        return finite(self.results.get(key)) if self.ok else None

    def curve(self, metric: str = CURVE_METRIC) -> list[tuple[int, float]]:
        return read_curve(self.path, metric)


def load_job(job_dir: Path, name: str) -> Job:
    overrides_list = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    overrides = dict(split_override(str(o)) for o in overrides_list)
    overrides = {k: v for k, v in overrides.items() if not k.startswith("hydra.") and k != "hydra"}
    results_file = job_dir / "results.json"
    if results_file.is_file():
        import json

        try:
            results = json.loads(results_file.read_text())
        except ValueError as err:
            results = {"status": "failed", "error": f"results.json does not parse: {err}"}
    else:
        results = {"status": "failed", "error": "no results.json: the job crashed, was killed, or is still running"}
    return Job(name=name, path=job_dir, overrides=overrides, results=results)


@dataclass
class Setting:
    """The jobs of a sweep that share every swept value except the seed."""

    values: dict[str, str]
    jobs: list[Job] = field(default_factory=list)

    @property
    def ok_jobs(self) -> list[Job]:
        return [j for j in self.jobs if j.ok]

    def stats(self, key: str) -> tuple[float | None, float | None, int]:
        """Mean, sample std (None below two values) and count of ``key`` over the successful jobs."""
        values = [v for v in (j.metric(key) for j in self.jobs) if v is not None]
        return mean_std(values)

    def by_seed(self, key: str) -> dict[Any, float]:
        out: dict[Any, float] = {}
        for job in self.jobs:
            value = job.metric(key)
            if value is not None and job.seed is not None:
                out.setdefault(_hashable(job.seed), value)
        return out

    def mean_curve(self, metric: str = CURVE_METRIC) -> list[tuple[int, float, float | None]]:
        """``(epoch, mean, std)`` over the successful jobs' curves."""
        per_epoch: dict[int, list[float]] = {}
        for job in self.ok_jobs:
            for epoch, value in job.curve(metric):
                per_epoch.setdefault(epoch, []).append(value)
        return [(epoch, *mean_std(vals)[:2]) for epoch, vals in sorted(per_epoch.items())]


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (list, dict)) else value


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    if not values:
        return None, None, 0
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std, len(values)


@dataclass
class Sweep:
    """A loaded sweep dir: its jobs and which override keys vary between them."""

    path: Path
    jobs: list[Job]
    swept: list[str]
    fixed: dict[str, str]
    optuna: dict[str, Any] | None = None

    @property
    def setting_keys(self) -> list[str]:
        """Swept keys that define a setting (all but ``seed``)."""
        return [k for k in self.swept if k != SEED_KEY]

    @property
    def x_key(self) -> str | None:
        """The x axis of ``summary.png``: λ if swept, else the first swept key."""
        keys = self.setting_keys
        return LAMBDA_KEY if LAMBDA_KEY in keys else (keys[0] if keys else None)

    @property
    def group_keys(self) -> list[str]:
        """The other setting keys: one line of ``summary.png`` / panel of ``curves.png`` per combination."""
        return [k for k in self.setting_keys if k != self.x_key]

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if not j.ok]

    def settings(self) -> list[Setting]:
        """One :class:`Setting` per combination of setting values, sorted by the group keys, then x."""
        groups: dict[tuple, Setting] = {}
        for job in self.jobs:
            values = {k: job.overrides.get(k, "") for k in self.setting_keys}
            key = tuple(_canonical(values[k]) for k in self.setting_keys)
            groups.setdefault(key, Setting(values=values)).jobs.append(job)
        order = [*self.group_keys, *([self.x_key] if self.x_key else [])]
        return sorted(groups.values(), key=lambda s: [_value_key(s.values[k]) for k in order])

    def baseline_of(self, setting: Setting, settings: Sequence[Setting]) -> Setting | None:
        """The λ=0 setting with the same other swept values (None when λ is not swept).

        Failing an exact match, a λ=0 setting that differs only in other ``drloc.*`` keys serves: a
        λ=0 run builds no DRLoc head, so those options cannot change it (e.g. one set of baselines
        for DRLoc runs that sweep ``drloc.tap_norm``)."""
        if LAMBDA_KEY not in self.setting_keys:
            return None
        baselines = [other for other in settings if as_number(other.values[LAMBDA_KEY]) == 0.0]
        for inert in (False, True):
            keys = [k for k in self.setting_keys if k != LAMBDA_KEY and not (inert and k.startswith("drloc."))]
            for other in baselines:
                if all(_canonical(other.values[k]) == _canonical(setting.values[k]) for k in keys):
                    return other
        return None


def _canonical(text: str) -> Any:
    number = as_number(text)
    return number if number is not None else text


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Folders below ``sweep_dir`` holding ``.hydra/overrides.yaml`` (the jobs), in natural order."""
    dirs = {p.parent.parent for p in sweep_dir.rglob("overrides.yaml") if p.parent.name == ".hydra"}
    dirs.discard(sweep_dir)
    dirs = {d for d in dirs if ".submitit" not in d.relative_to(sweep_dir).parts}
    return sorted(dirs, key=lambda d: natural_key(d.relative_to(sweep_dir).as_posix()))


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """Read every job of ``sweep_dir``; raises :class:`SweepError` if it holds none."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SweepError(
            f"{str(sweep_dir)!r} is not a folder. Pass the sweep dir of a multirun (the folder holding multirun.yaml and one subfolder per job)."
        )
    jobs = [load_job(d, d.relative_to(sweep_dir).as_posix()) for d in find_job_dirs(sweep_dir)]
    if not jobs:
        raise SweepError(
            f"{str(sweep_dir)!r} holds no job folders (<job>/.hydra/overrides.yaml). Pass the sweep dir of a multirun, "
            "e.g. outputs/train/multiruns/<date>, not a job folder or a single run's folder."
        )
    keys: list[str] = []
    for job in jobs:
        keys.extend(k for k in job.overrides if k not in keys)
    swept = [k for k in keys if len({_canonical(j.overrides[k]) if k in j.overrides else None for j in jobs}) > 1]
    fixed = {k: jobs[0].overrides[k] for k in keys if k not in swept}
    optuna = None
    optuna_file = sweep_dir / "optimization_results.yaml"
    if optuna_file.is_file():
        optuna = yaml.safe_load(optuna_file.read_text())
    return Sweep(path=sweep_dir, jobs=jobs, swept=swept, fixed=fixed, optuna=optuna)


# ---------------------------------------------------------------------------------- tables
def _number_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def summary_csv(sweep: Sweep) -> str:
    """``summary.csv``: one row per job. Numbers are written exactly as in ``results.json``."""
    result_cols = [c for c in RESULT_COLUMNS if c not in sweep.swept] + ([TASK_KEY] if records_task(sweep.jobs) else [])
    header = ["job", "status", *sweep.swept, *result_cols, "error"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for job in sweep.jobs:
        writer.writerow(
            [
                job.name,
                job.status,
                *(job.overrides.get(k, "") for k in sweep.swept),
                *(_number_text(job.results.get(c)) for c in result_cols),
                job.error.splitlines()[0][:300] if job.error else "",
            ]
        )
    return buffer.getvalue()


def records_task(jobs: Sequence[Job]) -> bool:
    """Whether any of ``jobs`` recorded :data:`TASK_KEY` (older runs did not)."""
    return any(job.results.get(TASK_KEY) is not None for job in jobs)


def task_text(setting: Setting) -> str:
    """:data:`TASK_KEY` of a setting, mean ± std over its jobs ("–" without DRLoc or a record)."""
    mean, std, _ = setting.stats(TASK_KEY)
    if mean is None:
        return "–"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def pct_text(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def paired_delta(setting: Setting, baseline: Setting, key: str) -> tuple[float | None, float | None, int]:
    """Mean, std and count of ``setting - baseline`` over the seeds both ran successfully."""
    mine, base = setting.by_seed(key), baseline.by_seed(key)
    diffs = [mine[s] - base[s] for s in mine if s in base]
    return mean_std(diffs)


def delta_text(delta: tuple[float | None, float | None, int]) -> str:
    mean, std, n = delta
    if mean is None:
        return "–"
    return f"{100 * mean:+.2f}" + (f" ± {100 * std:.2f}" if std is not None else "") + f" (n={n})"


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(sweep: Sweep) -> str:
    """``summary.md``: mean ± std over seeds per setting and the paired change vs λ=0."""
    settings = sweep.settings()
    n_ok = sum(j.ok for j in sweep.jobs)
    seeds = sorted({repr(_hashable(j.seed)) for j in sweep.jobs if j.seed is not None})
    lines = [
        f"# Sweep `{sweep.path.name}`",
        "",
        f"{len(sweep.jobs)} jobs: {n_ok} ok, {len(sweep.jobs) - n_ok} failed. "
        f"Swept: {', '.join(f'`{k}`' for k in sweep.swept) or 'nothing'}; "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} per setting at most.",
    ]
    if sweep.fixed:
        lines += ["", "Fixed overrides: " + " ".join(f"`{k}={v}`" for k, v in sweep.fixed.items())]
    lines += [
        "",
        "Accuracies in %, mean ± std (sample std) over the seeds of each setting; failed jobs are left out.",
    ]
    has_delta = LAMBDA_KEY in sweep.setting_keys
    if has_delta:
        lines.append(
            "Δ: change vs the λ=0 baseline of the same setting in percentage points, mean ± std of the "
            "per-seed paired differences (DRLoc run minus baseline run of the same seed), n = seeds paired."
        )
    with_task = records_task(sweep.jobs)
    if with_task:
        lines.append(
            f"{TASK_TITLE}: the last epoch's training DRLoc loss over the loss of a head that predicts the best "
            "constant offset (chance_l1); near 1 = the head did not learn to localise."
        )
    header = [*(f"`{k}`" for k in sweep.setting_keys), "jobs ok", *(t for _, t in SUMMARY_METRICS)]
    if has_delta:
        header += [t for _, t in DELTA_METRICS]
    if with_task:
        header.append(TASK_TITLE)
    header.append("wall s / job")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for setting in settings:
        row = [md_cell(setting.values[k]) for k in sweep.setting_keys]
        row.append(f"{len(setting.ok_jobs)}/{len(setting.jobs)}")
        row += [pct_text(*setting.stats(key)[:2]) for key, _ in SUMMARY_METRICS]
        if has_delta:
            baseline = sweep.baseline_of(setting, settings)
            is_base = baseline is setting
            for key, _ in DELTA_METRICS:
                row.append("baseline" if is_base else ("–" if baseline is None else delta_text(paired_delta(setting, baseline, key))))
        if with_task:
            row.append(task_text(setting))
        wall = setting.stats("wall_time_s")[0]
        row.append("–" if wall is None else f"{wall:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    if sweep.failed:
        lines += ["", "## Failed jobs", "", "| job | overrides | error |", "|---|---|---|"]
        for job in sweep.failed:
            swept = " ".join(f"{k}={job.overrides.get(k, '')}" for k in sweep.swept)
            error = job.error.splitlines()[0][:200] if job.error else job.status
            lines.append(f"| {job.name} | `{md_cell(swept)}` | {md_cell(error)} |")
    if sweep.optuna and "best_params" in sweep.optuna:
        best = ", ".join(f"`{k}={v}`" for k, v in sweep.optuna["best_params"].items())
        lines += ["", f"Optuna best: {best} → {sweep.optuna.get('best_value')}"]
    lines += ["", "Figures: `summary.png` (accuracy vs " + f"`{sweep.x_key or 'job'}`), `curves.png` ({CURVE_METRIC} per epoch).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- figures
def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _group_label(sweep: Sweep, setting: Setting) -> str:
    return ", ".join(f"{k}={setting.values[k]}" for k in sweep.group_keys) or "all"


def _grouped(sweep: Sweep) -> list[tuple[str, list[Setting]]]:
    out: dict[str, list[Setting]] = {}
    for setting in sweep.settings():
        out.setdefault(_group_label(sweep, setting), []).append(setting)
    return list(out.items())


def _x_positions(sweep: Sweep) -> tuple[dict[str, float], bool]:
    """x position of each value of the x key; numeric keys keep their values."""
    key = sweep.x_key
    texts = sorted({j.overrides.get(key, "") for j in sweep.jobs} if key else {""}, key=_value_key)
    numbers = [as_number(t) for t in texts]
    if key and all(n is not None for n in numbers):
        return {t: n for t, n in zip(texts, numbers)}, True
    return {t: float(i) for i, t in enumerate(texts)}, False


# The accuracy panels span at least this many percentage points, so a difference of a fraction of a
# point between two settings is drawn at its true scale rather than stretched across the axis.
MIN_SPAN_PCT = 10.0


def _setting_x(sweep: Sweep, setting: Setting, positions: dict[str, float]) -> float:
    return positions[setting.values.get(sweep.x_key, "")] if sweep.x_key else 0.0


def _widen(ax, min_span: float) -> None:
    low, high = ax.get_ylim()
    if high - low < min_span:
        middle = (low + high) / 2
        ax.set_ylim(middle - min_span / 2, middle + min_span / 2)


def plot_summary(sweep: Sweep):
    """``summary.png``: each job's val / test acc1 as a point at its x value (λ, or the first swept
    key), the mean ± std over its seeds as a marker labelled with the seed count, on an axis at
    least :data:`MIN_SPAN_PCT` points tall; when λ = 0 baselines exist, a last panel shows the
    per-seed paired differences (DRLoc run minus the baseline of the same seed) with a zero line."""
    metrics = [
        (k, t) for k, t in (("val_acc1", "val acc1"), ("test_acc1", "test acc1")) if any(j.metric(k) is not None for j in sweep.jobs)
    ]
    metrics = metrics or [("val_acc1", "val acc1")]
    settings = sweep.settings()
    paired = [(st, base) for st in settings if (base := sweep.baseline_of(st, settings)) is not None and base is not st]
    delta_key = metrics[-1][0]
    panels = len(metrics) + (1 if paired else 0)
    fig = new_figure(4.6 * panels, 4.0)
    axes = fig.subplots(1, panels, squeeze=False, sharex=True)[0]  # the Δ panel on the same λ scale
    positions, numeric = _x_positions(sweep)
    groups = _grouped(sweep)
    spread = (max(positions.values()) - min(positions.values())) if len(positions) > 1 else 1.0
    jitter = spread * 0.04 if numeric else 0.15
    for ax, (key, title) in zip(axes, metrics):
        for index, (label, group) in enumerate(groups):
            shift = (index - (len(groups) - 1) / 2) * jitter * 0.6
            for i, setting in enumerate(group):
                values = [100 * v for v in (j.metric(key) for j in setting.ok_jobs) if v is not None]
                _draw_spread(ax, _setting_x(sweep, setting, positions) + shift, values, f"C{index % 10}", label if i == 0 else None, jitter)
        ax.set_title(f"{title}: each job (dots), mean ± std (n = seeds)", fontsize=9)
        ax.set_ylabel(f"{title} (%)")
        _widen(ax, MIN_SPAN_PCT)
    if paired:
        ax = axes[-1]
        by_group = {label: index for index, (label, _) in enumerate(groups)}
        labelled: set[str] = set()
        for setting, base in paired:
            mine, theirs = setting.by_seed(delta_key), base.by_seed(delta_key)
            diffs = [100 * (mine[s] - theirs[s]) for s in mine if s in theirs]
            label = _group_label(sweep, setting)
            index = by_group.get(label, 0)
            shift = (index - (len(groups) - 1) / 2) * jitter * 0.6
            _draw_spread(
                ax, _setting_x(sweep, setting, positions) + shift, diffs, f"C{index % 10}", None if label in labelled else label, jitter
            )
            labelled.add(label)
        ax.axhline(0.0, color="0.3", linewidth=1, linestyle="--")
        ax.set_title(f"Δ {delta_key.replace('_', ' ')} vs λ = 0, paired by seed", fontsize=9)
        ax.set_ylabel("percentage points")
        _widen(ax, 4.0)
    for ax in axes:
        ax.margins(x=0.15)
        ax.set_xlabel("λ (drloc.lambda_drloc)" if sweep.x_key == LAMBDA_KEY else (sweep.x_key or "job"))
        if not numeric:
            ax.set_xticks(list(positions.values()), list(positions.keys()), rotation=30 if len(positions) > 4 else 0)
        ax.grid(alpha=0.3)
        if len(groups) > 1 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, title=", ".join(sweep.group_keys), title_fontsize=7)
    failed = len(sweep.failed)
    fig.suptitle(
        f"Sweep {sweep.path.name}" + (f" ({failed} failed job{'s' if failed != 1 else ''} left out)" if failed else ""), fontsize=11
    )
    return fig


def _draw_spread(ax, x: float, values: list[float], color: str, label: str | None, jitter: float) -> None:
    """Every job as a small point around ``x``; their mean ± std as a larger marker labelled n=."""
    if not values:
        return
    offsets = [0.0] if len(values) == 1 else [(-0.5 + i / (len(values) - 1)) * jitter for i in range(len(values))]
    ax.scatter([x + o for o in offsets], values, s=16, alpha=0.5, color=color, linewidths=0)
    mean, std, n = mean_std(values)
    ax.errorbar([x], [mean], yerr=[std or 0.0], marker="D", markersize=6, capsize=5, color=color, label=label, linestyle="none")
    ax.annotate(f"n={n}", (x, mean), textcoords="offset points", xytext=(7, 4), fontsize=7, color=color)


def plot_curves(sweep: Sweep, metric: str = CURVE_METRIC):
    """``curves.png``: ``metric`` per epoch, baseline (λ=0, dashed black) vs DRLoc, one panel per group."""
    groups = _grouped(sweep)
    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    fig = new_figure(5.0 * columns, 3.8 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    x_values = sorted({s.values.get(sweep.x_key, "") for _, ss in groups for s in ss}, key=_value_key) if sweep.x_key else [""]
    cmap = _colormap()
    drloc_values = [v for v in x_values if not (sweep.x_key == LAMBDA_KEY and as_number(v) == 0.0)]
    anything = False
    for ax, (label, settings) in zip(axes, groups):
        for setting in settings:
            curve = setting.mean_curve(metric)
            if not curve:
                continue
            anything = True
            value = setting.values.get(sweep.x_key, "") if sweep.x_key else ""
            epochs = [e + 1 for e, _, _ in curve]
            means = [100 * m for _, m, _ in curve]
            stds = [100 * s if s is not None else 0.0 for _, _, s in curve]
            if sweep.x_key == LAMBDA_KEY and as_number(value) == 0.0:
                style = {"color": "black", "linestyle": "--", "label": "baseline (λ=0)"}
            else:
                shade = drloc_values.index(value) / max(1, len(drloc_values) - 1) if value in drloc_values else 0.0
                name = "DRLoc λ" if sweep.x_key == LAMBDA_KEY else (sweep.x_key or "run")
                style = {"color": cmap(0.15 + 0.7 * shade), "label": f"{name}={value}" if sweep.x_key else name}
            ax.plot(epochs, means, marker="o", markersize=3, **style)
            if any(stds):
                ax.fill_between(
                    epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], color=style["color"], alpha=0.15
                )
        if sweep.group_keys:
            ax.set_title(label, fontsize=10)
        ax.xaxis.set_major_locator(_integer_locator())
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes[len(groups) :]:
        ax.set_axis_off()
    if not anything:
        axes[0].text(
            0.5,
            0.5,
            f"no {metric} logged\n(the CSV logger writes <job>/csv/metrics.csv)",
            ha="center",
            va="center",
            transform=axes[0].transAxes,
        )
    fig.suptitle(f"{metric} per epoch, mean ± std over seeds: baseline vs DRLoc", fontsize=11)
    return fig


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _colormap():
    from matplotlib import colormaps

    return colormaps["viridis"]


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


# ---------------------------------------------------------------------------------- writing
def write_summary(sweep_dir: str | Path) -> dict[str, Path]:
    """Write ``summary.csv``, ``summary.md``, ``summary.png`` and ``curves.png`` into ``sweep_dir``."""
    sweep = load_sweep(sweep_dir)
    outputs = {
        "summary.csv": summary_csv(sweep).encode(),
        "summary.md": summary_markdown(sweep).encode(),
        "summary.png": png_bytes(plot_summary(sweep)),
        "curves.png": png_bytes(plot_curves(sweep)),
    }
    paths = {}
    for name, data in outputs.items():
        path = sweep.path / name
        write_atomic(path, data)
        paths[name] = path
    return paths


def settings_table(sweep: Sweep) -> str:
    """The per-setting table of ``summary.md`` (the lines starting with ``|`` before the failed jobs)."""
    text = summary_markdown(sweep).split("## Failed jobs")[0]
    return "\n".join(line for line in text.splitlines() if line.startswith("|"))


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, write the summary files into the sweep dir and print the table.

    A failure here is logged, never raised: the jobs' own results stay in place and
    ``python -m vt_drloc.report <sweep dir>`` can redo the summary."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        try:
            paths = write_summary(sweep_dir)
            sweep = load_sweep(sweep_dir)
        except Exception:  # reporting must not turn a finished sweep into a failure
            log.exception("could not write the sweep summary of %s; retry with: python -m vt_drloc.report %s", sweep_dir, sweep_dir)
            return
        failed = len(sweep.failed)
        print(
            f"\nSweep {sweep_dir}: {len(sweep.jobs)} jobs, {failed} failed\n{settings_table(sweep)}\n"
            f"wrote {', '.join(p.name for p in paths.values())} into {sweep_dir}"
        )


def iter_values(sweep: Sweep, key: str) -> Iterable[str]:
    """The distinct values of a swept key, sorted (numbers numerically)."""
    return sorted({j.overrides.get(key, "") for j in sweep.jobs}, key=_value_key)


__all__ = [
    "SUMMARY_FILES",
    "Job",
    "Setting",
    "Sweep",
    "SweepError",
    "SweepSummary",
    "final_metrics",
    "iter_values",
    "load_sweep",
    "non_finite_metrics",
    "paired_delta",
    "plot_curves",
    "plot_summary",
    "read_curve",
    "summary_csv",
    "summary_markdown",
    "write_summary",
]
