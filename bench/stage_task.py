"""Multi-scale DRLoc: did each stage's head learn its task? Last-epoch L1 / chance per stage.

For every study cell whose DRLoc runs used ``drloc.stages`` other than ``last``, reads each run's
``train/drloc_stage<i>`` curve (the CSV logger) and divides its last epoch by the chance L1 of that
stage's pooled grid (:func:`vt_drloc.core.chance_l1`, grids as ``results.json`` records them). A value
near 1: that stage's head predicts no better than a constant offset.

    python bench/stage_task.py studies/study_cifar10 [--json bench/results/stage_task.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vt_drloc.core import chance_l1  # noqa: E402
from vt_drloc.report import load_study, read_curve  # noqa: E402


def stage_rows(study_dirs: list[Path]) -> list[dict]:
    rows = []
    for study_dir in study_dirs:
        for row in load_study(study_dir):
            jobs = row.drloc.ok_jobs
            options = jobs[0].results.get("drloc", {}) if jobs else {}
            grids = jobs[0].results.get("drloc_grid") if jobs else None
            if options.get("stages", "last") == "last" or not grids or not isinstance(grids[0], list):
                continue
            per_stage = []
            for index, (height, width) in enumerate(grids):
                chance = chance_l1(height, width, options.get("target", "abs"))
                last = [
                    curve[-1][1] / chance
                    for job in jobs
                    if (curve := read_curve(job.path, f"train/drloc_stage{index}"))
                ]
                per_stage.append({"stage": index, "grid": [height, width], "chance": chance, "last_over_chance": last})
            rows.append({"study": study_dir.name, "cell": row.label, "lambda": row.lam, "stages": per_stage})
    return rows


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.fmean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def markdown(rows: list[dict]) -> str:
    lines = [
        "| study | cell | λ | stage | grid (pooled) | seeds | last-epoch L1 / chance |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for stage in row["stages"]:
            grid = "×".join(map(str, stage["grid"]))
            lines.append(
                f"| {row['study']} | {row['cell']} | {row['lambda']} | {stage['stage']} | {grid} "
                f"| {len(stage['last_over_chance'])} | {_mean_std(stage['last_over_chance'])} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, default=Path("bench/results/stage_task.json"))
    args = parser.parse_args(argv)
    rows = stage_rows(args.studies)
    print(markdown(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
