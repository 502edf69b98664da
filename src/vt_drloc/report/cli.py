"""Summarise a finished (or running) sweep: ``python -m vt_drloc.report <sweep dir>``.

Writes ``summary.csv``, ``summary.md``, ``summary.png`` and ``curves.png`` into the sweep dir (the
same files the end-of-multirun callback writes; see :mod:`vt_drloc.report.summary`) and prints the table.
``--study <study dir>`` does that for every sweep dir (cell) below the study dir and adds
``study.csv`` / ``study.md`` / ``study.png``, each DRLoc setting against its baseline
(:mod:`vt_drloc.report.study`). ``--copy-to DEST`` first copies the sweep's light files (overrides,
composed config, ``results.json``, CSV log; no checkpoints) into a new folder ``DEST`` and reports
there, for committing results beside a write-up. Running it again on the same folder rewrites identical files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vt_drloc.report.study import copy_sweep_results, load_study, study_markdown, write_study
from vt_drloc.report.summary import write_summary
from vt_drloc.report.sweep import SweepError, load_sweep
from vt_drloc.report.tables import summary_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vt_drloc.report",
        description="Write summary.csv / summary.md / summary.png / curves.png into a Hydra multirun sweep dir.",
    )
    parser.add_argument(
        "sweep_dir",
        help="the sweep dir of a multirun, e.g. outputs/train/multiruns/<date> (with --study: a folder of sweep dirs)",
    )
    parser.add_argument(
        "--study",
        action="store_true",
        help="sweep_dir holds one sweep dir per cell: summarise each and write study.csv/md/png",
    )
    parser.add_argument(
        "--copy-to",
        metavar="DEST",
        help=(
            "copy the sweep's overrides, configs, results.json and CSV logs into the new folder DEST, then report there"
        ),
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    args = parser.parse_args(argv)
    try:
        if args.copy_to:
            if args.study:
                parser.error("--copy-to copies one sweep dir; run it per cell, then --study on their parent")
            copy_sweep_results(args.sweep_dir, args.copy_to)
            args.sweep_dir = args.copy_to
        paths = write_study(args.sweep_dir) if args.study else write_summary(args.sweep_dir)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        if args.study:
            print(study_markdown(load_study(args.sweep_dir), Path(args.sweep_dir).name))
        else:
            print(summary_markdown(load_sweep(args.sweep_dir)))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
