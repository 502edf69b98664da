"""The sweep summary files, written at the end of every multirun and on demand.

:func:`write_summary` turns a sweep dir into ``summary.csv``, ``summary.md`` (tables),
``summary.png`` and ``curves.png`` (figures). :class:`SweepSummary` is the Hydra callback of
``conf/hydra/default.yaml`` that calls it at the end of every multirun and prints the table;
``python -m vt_drloc.report <sweep dir>`` does the same on demand.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vt_drloc.base.files import write_atomic
from vt_drloc.report.figures import plot_curves, plot_summary, png_bytes
from vt_drloc.report.sweep import load_sweep
from vt_drloc.report.tables import settings_table, summary_csv, summary_markdown

log = logging.getLogger("vt_drloc.report")


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
            log.exception(
                "could not write the sweep summary of %s; retry with: python -m vt_drloc.report %s",
                sweep_dir,
                sweep_dir,
            )
            return
        failed = len(sweep.failed)
        print(
            f"\nSweep {sweep_dir}: {len(sweep.jobs)} jobs, {failed} failed\n{settings_table(sweep)}\n"
            f"wrote {', '.join(p.name for p in paths.values())} into {sweep_dir}"
        )


__all__ = ["SweepSummary", "write_summary"]
