"""Reporting: from finished runs' ``results.json`` files to tables and figures. Training imports
none of it; it reads only what runs wrote.

* :mod:`vt_drloc.report.sweep`: one multirun sweep dir -> ``summary.csv`` / ``.md`` / ``.png`` and
  ``curves.png`` (paired differences against λ = 0), and the :class:`SweepSummary` Hydra callback
  that writes them at the end of every multirun (``conf/hydra/default.yaml``);
* :mod:`vt_drloc.report.study`: a folder of sweep dirs (cells) -> ``study.csv`` / ``.md`` / ``.png``;
* :mod:`vt_drloc.report.cli`: ``python -m vt_drloc.report <sweep dir>`` / ``--study <study dir>`` /
  ``--copy-to <dest>``.
"""

from vt_drloc.report.cli import main
from vt_drloc.report.study import STUDY_FILES, StudyRow, copy_sweep_results, find_cells, load_study, study_markdown, write_study
from vt_drloc.report.sweep import (
    LAMBDA_KEY,
    SUMMARY_FILES,
    TASK_KEY,
    Setting,
    Sweep,
    SweepError,
    SweepSummary,
    load_sweep,
    paired_delta,
    plot_curves,
    plot_summary,
    read_curve,
    summary_csv,
    summary_markdown,
    write_summary,
)

__all__ = [
    "LAMBDA_KEY",
    "STUDY_FILES",
    "SUMMARY_FILES",
    "TASK_KEY",
    "Setting",
    "StudyRow",
    "Sweep",
    "SweepError",
    "SweepSummary",
    "copy_sweep_results",
    "find_cells",
    "load_study",
    "load_sweep",
    "main",
    "paired_delta",
    "plot_curves",
    "plot_summary",
    "read_curve",
    "study_markdown",
    "summary_csv",
    "summary_markdown",
    "write_study",
    "write_summary",
]
