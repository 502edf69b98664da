"""Sweep tables: ``summary.csv`` (one row per job) and ``summary.md`` (mean ± std over seeds per
setting, and the paired change against the λ = 0 baseline of the same setting)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from vt_drloc.report.markdown import markdown_table
from vt_drloc.report.stats import paired_delta
from vt_drloc.report.sweep import (
    CURVE_METRIC,
    DELTA_METRICS,
    LAMBDA_KEY,
    RESULT_COLUMNS,
    SUMMARY_METRICS,
    TASK_KEY,
    TASK_TITLE,
    Job,
    Setting,
    Sweep,
    hashable,
)


def summary_csv(sweep: Sweep) -> str:
    """``summary.csv``: one row per job. Numbers are written exactly as in ``results.json`` (None: empty)."""
    result_cols = [c for c in RESULT_COLUMNS if c not in sweep.swept] + ([TASK_KEY] if records_task(sweep.jobs) else [])
    jobs = pd.DataFrame(
        [
            {
                "job": job.name,
                "status": job.status,
                **{k: job.overrides.get(k, "") for k in sweep.swept},
                **{c: job.results.get(c) for c in result_cols},
                "error": job.error.splitlines()[0][:300] if job.error else "",
            }
            for job in sweep.jobs
        ],
        columns=["job", "status", *sweep.swept, *result_cols, "error"],
        dtype=object,
    )
    return jobs.to_csv(index=False, lineterminator="\n")


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


def delta_text(delta: tuple[float | None, float | None, int], scale: float = 100.0) -> str:
    """A paired difference as ``+m ± s (n=k)`` in points (``scale`` 100 turns fractions into points)."""
    mean, std, n = delta
    if mean is None:
        return "–"
    return f"{scale * mean:+.2f}" + (f" ± {scale * std:.2f}" if std is not None else "") + f" (n={n})"


def settings_frame(sweep: Sweep, settings: Sequence[Setting], with_task: bool) -> pd.DataFrame:
    """The per-setting table of ``summary.md`` as text cells: setting values, jobs ok, mean ± std of
    each metric, the paired Δ vs the λ=0 baseline (when λ is swept), the head's task ratio, wall time."""
    has_delta = LAMBDA_KEY in sweep.setting_keys
    rows = []
    for setting in settings:
        row = {f"`{k}`": setting.values[k] for k in sweep.setting_keys}
        row["jobs ok"] = f"{len(setting.ok_jobs)}/{len(setting.jobs)}"
        row.update({title: pct_text(*setting.stats(key)[:2]) for key, title in SUMMARY_METRICS})
        if has_delta:
            baseline = sweep.baseline_of(setting, settings)
            for key, title in DELTA_METRICS:
                if baseline is setting:
                    row[title] = "baseline"
                else:
                    row[title] = "–" if baseline is None else delta_text(paired_delta(setting, baseline, key))
        if with_task:
            row[TASK_TITLE] = task_text(setting)
        wall = setting.stats("wall_time_s")[0]
        row["wall s / job"] = "–" if wall is None else f"{wall:.1f}"
        rows.append(row)
    header = [*(f"`{k}`" for k in sweep.setting_keys), "jobs ok", *(t for _, t in SUMMARY_METRICS)]
    header += [t for _, t in DELTA_METRICS] if has_delta else []
    header += [TASK_TITLE] if with_task else []
    return pd.DataFrame(rows, columns=[*header, "wall s / job"], dtype=object)


def summary_markdown(sweep: Sweep) -> str:
    """``summary.md``: mean ± std over seeds per setting and the paired change vs λ=0."""
    settings = sweep.settings()
    n_ok = sum(j.ok for j in sweep.jobs)
    seeds = sorted({repr(hashable(j.seed)) for j in sweep.jobs if j.seed is not None})
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
    lines += ["", *markdown_table(settings_frame(sweep, settings, with_task))]
    if sweep.failed:
        failed = pd.DataFrame(
            [
                {
                    "job": job.name,
                    "overrides": "`" + " ".join(f"{k}={job.overrides.get(k, '')}" for k in sweep.swept) + "`",
                    "error": job.error.splitlines()[0][:200] if job.error else job.status,
                }
                for job in sweep.failed
            ]
        )
        lines += ["", "## Failed jobs", "", *markdown_table(failed)]
    if sweep.optuna and "best_params" in sweep.optuna:
        best = ", ".join(f"`{k}={v}`" for k, v in sweep.optuna["best_params"].items())
        lines += ["", f"Optuna best: {best} → {sweep.optuna.get('best_value')}"]
    lines += [
        "",
        "Figures: `summary.png` (accuracy vs " + f"`{sweep.x_key or 'job'}`), `curves.png` ({CURVE_METRIC} per epoch).",
        "",
    ]
    return "\n".join(lines)


def settings_table(sweep: Sweep) -> str:
    """The per-setting table of ``summary.md`` alone (printed at the end of a multirun)."""
    return "\n".join(markdown_table(settings_frame(sweep, sweep.settings(), records_task(sweep.jobs))))
