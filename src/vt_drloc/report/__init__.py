"""Reporting: from finished runs' ``results.json`` files to tables and figures. Training imports
none of it; it reads only what runs wrote.

* :mod:`vt_drloc.report.sweep`: reading one multirun sweep dir (jobs, swept keys, settings);
* :mod:`vt_drloc.report.stats`: mean ± std over seeds and paired differences against λ = 0;
* :mod:`vt_drloc.report.tables`: ``summary.csv`` / ``summary.md``;
* :mod:`vt_drloc.report.figures`: ``summary.png`` / ``curves.png``;
* :mod:`vt_drloc.report.summary`: :func:`write_summary` (the four files) and the :class:`SweepSummary`
  Hydra callback that writes them at the end of every multirun (``conf/hydra/default.yaml``);
* :mod:`vt_drloc.report.study`: a folder of sweep dirs (cells) -> ``study.csv`` / ``.md`` / ``.png``;
* :mod:`vt_drloc.report.gain_curve`: the gain curve a study's ``gain_curve.json`` names;
* :mod:`vt_drloc.report.cli`: ``python -m vt_drloc.report <sweep dir>`` / ``--study <study dir>`` /
  ``--copy-to <dest>``.
"""

from vt_drloc.report.cli import main
from vt_drloc.report.figures import plot_curves, plot_summary
from vt_drloc.report.stats import paired_delta
from vt_drloc.report.study import (
    STUDY_FILES,
    StudyRow,
    copy_sweep_results,
    find_cells,
    load_study,
    study_markdown,
    write_study,
)
from vt_drloc.report.summary import SweepSummary, write_summary
from vt_drloc.report.sweep import (
    LAMBDA_KEY,
    SUMMARY_FILES,
    TASK_KEY,
    Setting,
    Sweep,
    SweepError,
    load_sweep,
    read_curve,
)
from vt_drloc.report.tables import summary_csv, summary_markdown

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
