"""Did the DRLoc head learn its task? Training DRLoc loss of a study's runs against chance.

For every DRLoc setting (λ > 0) of every cell of the given study dirs (see vt_drloc.report.study), reads
``train/drloc_epoch`` from each job's CSV log and prints, mean ± std over seeds, the loss of the
first and of the last epoch beside ``chance_l1``: the loss of a head that predicts the best
constant offset, i.e. knows nothing about positions. A last-epoch loss near chance means the
localisation task was not learned, so DRLoc can only have acted as noise. It also says when the
head learned: per seed, the first epoch (1-based) whose loss fell below half of chance ("–": never).
Prints a markdown table and writes bench/results/drloc_task.json.

    python bench/drloc_task.py studies/study_cifar10 studies/study_flowers102 --grid 8
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from vt_drloc.core import chance_l1
from vt_drloc.report import load_study, read_curve

LOSS_COLUMN = "train/drloc_epoch"
LEARNED_FRACTION = 0.5  # "learned": the epoch loss first below this fraction of chance


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.fmean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def task_rows(study_dirs: list[Path], grid: int) -> list[dict]:
    rows = []
    for study_dir in study_dirs:
        for row in load_study(study_dir):
            curves = [[value for _, value in read_curve(job.path, LOSS_COLUMN)] for job in row.drloc.ok_jobs]
            curves = [c for c in curves if c]
            options = row.drloc.ok_jobs[0].results.get("drloc", {}) if row.drloc.ok_jobs else {}
            if options.get("mode", "l1") != "l1":
                continue  # chance_l1 is the chance level of the l1 loss only
            chance = chance_l1(grid, grid, options.get("target", "abs"))
            label = row.label
            results = row.drloc.ok_jobs[0].results if row.drloc.ok_jobs else {}
            recorded, recorded_grid = results.get("drloc_chance_l1"), results.get("drloc_grid")
            if options.get("stages", "last") != "last" and recorded:
                # multi-scale: the loss is a sum over stages, so its chance is the sum the run recorded
                chance, label = float(recorded), f"{row.label} (chance: sum over stages)"
            elif recorded and recorded_grid and list(recorded_grid) != [grid, grid]:
                # a run whose grid is not grid x grid (a ResNet's 4x4 map, a Swin with patch 4): its own chance
                chance, label = float(recorded), f"{row.label} (chance: its {recorded_grid[0]}×{recorded_grid[1]} grid)"
            last = [c[-1] for c in curves]
            learned = [next((i + 1 for i, v in enumerate(c) if v < LEARNED_FRACTION * chance), None) for c in curves]
            rows.append(
                {
                    "study": study_dir.name,
                    "cell": label,
                    "lambda": row.lam,
                    "target": options.get("target"),
                    "seeds": len(curves),
                    "first_epoch": [c[0] for c in curves],
                    "last_epoch": last,
                    "chance": chance,
                    "last_over_chance": statistics.fmean(last) / chance if last else None,
                    "learned_epoch": learned,
                }
            )
    return rows


def markdown(rows: list[dict], grid: int) -> str:
    lines = [
        "| study | cell | λ | target | seeds | DRLoc loss, epoch 1 | DRLoc loss, last epoch "
        f"| chance ({grid}×{grid} unless the cell says) | last / chance | epoch < chance / 2, per seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "–" if r["last_over_chance"] is None else f"{r['last_over_chance']:.2f}"
        lines.append(
            f"| {r['study']} | {r['cell']} | {r['lambda']} | {r['target']} | {r['seeds']} | "
            f"{_mean_std(r['first_epoch'])} | {_mean_std(r['last_epoch'])} | {r['chance']:.3f} | {ratio} | "
            f"{', '.join('–' if e is None else str(e) for e in r['learned_epoch'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dirs", nargs="+", type=Path)
    parser.add_argument(
        "--grid", type=int, default=8, help="side of the grid the loss was computed on (the study models: 8)"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "drloc_task.json"))
    args = parser.parse_args()
    rows = task_rows(args.study_dirs, args.grid)
    print(markdown(rows, args.grid))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"grid": args.grid, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
