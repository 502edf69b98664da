"""Summarise a finished (or running) sweep: ``python -m vt_drloc.report <sweep dir>``.

Writes ``summary.csv``, ``summary.md``, ``summary.png`` and ``curves.png`` into the sweep dir (the
same files the end-of-multirun callback writes; see :mod:`vt_drloc.sweep`) and prints the table.
Running it again on the same folder rewrites identical files.
"""

from __future__ import annotations

import argparse
import sys

from vt_drloc.sweep import SweepError, load_sweep, summary_markdown, write_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vt_drloc.report",
        description="Write summary.csv / summary.md / summary.png / curves.png into a Hydra multirun sweep dir.",
    )
    parser.add_argument("sweep_dir", help="the sweep dir of a multirun, e.g. outputs/train/multiruns/<date>")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print summary.md")
    args = parser.parse_args(argv)
    try:
        paths = write_summary(args.sweep_dir)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(summary_markdown(load_sweep(args.sweep_dir)))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
