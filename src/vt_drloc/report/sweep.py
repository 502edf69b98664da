"""Reading a sweep: a Hydra multirun folder -> its jobs, their settings and results.

A Hydra multirun (``python -m vt_drloc.train -m drloc.lambda_drloc=0,0.1,0.5 seed=0,1,2``) writes
one folder per job below its sweep dir, each with ``.hydra/overrides.yaml`` and ``results.json``
(status ``ok`` or ``failed``). :func:`load_sweep` reads them into a :class:`Sweep`: its jobs, the
override keys that vary, and the settings (the swept values except ``seed``) with their seeds.
Tables (:mod:`vt_drloc.report.tables`), figures (:mod:`vt_drloc.report.figures`) and the summary
files (:mod:`vt_drloc.report.summary`) are drawn from it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from vt_drloc.report.stats import mean_std

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
# Did the head learn its task? The last epoch's training DRLoc loss / chance_l1 (vt_drloc.core.task_record):
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


def value_key(text: str) -> tuple:
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
    try:  # as text, converted by Python's float(): pandas' own float parser may differ in the last bit
        frame = pd.read_csv(files[0], dtype=str, usecols=lambda column: column in ("epoch", metric))
    except pd.errors.EmptyDataError:
        return []
    if metric not in frame or "epoch" not in frame:
        return []
    logged = frame.dropna().astype(float)
    last = logged.groupby(logged["epoch"].astype(int))[metric].last()
    return [(int(epoch), float(value)) for epoch, value in last.items()]


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
                out.setdefault(hashable(job.seed), value)
        return out

    def mean_curve(self, metric: str = CURVE_METRIC) -> list[tuple[int, float, float | None]]:
        """``(epoch, mean, std)`` over the successful jobs' curves."""
        per_epoch: dict[int, list[float]] = {}
        for job in self.ok_jobs:
            for epoch, value in job.curve(metric):
                per_epoch.setdefault(epoch, []).append(value)
        return [(epoch, *mean_std(vals)[:2]) for epoch, vals in sorted(per_epoch.items())]


def hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (list, dict)) else value


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
        return sorted(groups.values(), key=lambda s: [value_key(s.values[k]) for k in order])

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
            f"{str(sweep_dir)!r} is not a folder. Pass the sweep dir of a multirun (the folder holding "
            "multirun.yaml and one subfolder per job)."
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


def iter_values(sweep: Sweep, key: str) -> Iterable[str]:
    """The distinct values of a swept key, sorted (numbers numerically)."""
    return sorted({j.overrides.get(key, "") for j in sweep.jobs}, key=value_key)
