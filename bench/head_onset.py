"""When does the DRLoc head start learning? Optimizer steps and λ-weighted steps at its onset, per run.

The head's training L1 sits on a plateau just under chance (it predicts the best constant offset)
until, at some step, it leaves it and falls. For every DRLoc setting (λ > 0, L1, the final grid) of
every cell of the given study dirs this reads ``train/drloc_epoch`` from each job's CSV log and
prints, per seed:

* the onset: the optimizer step at the end of the first epoch whose loss is below
  ``--onset`` (0.8) of chance;
* λ·steps at the onset: the sum of λ over the steps before it, with λ as the run's schedule set it
  (:func:`vt_drloc.core.drloc_lambda`, read at every step's fractional epoch; an ``adaptive`` run
  holds λ until its head has learned, so before the onset it is the warm-up then λ);
* learned: the step at the end of the first epoch below ``--learned`` (0.2) of chance ("–": never);
* the last epoch's loss / chance.

If the onset followed data size it would move with images per class; if it followed optimizer steps
and λ it would sit at about the same λ·steps in every cell. Prints a markdown table and writes
bench/results/head_onset.json.

    python bench/head_onset.py studies/study_cifar10 studies/probes/study_cifar10 studies/study_flowers102 \
        --cells '*vit*'
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
from pathlib import Path
from typing import Any

from vt_drloc.core import chance_l1, drloc_lambda
from vt_drloc.report import load_study, read_curve

LOSS_COLUMN = "train/drloc_epoch"


def _mean_std(values: list[float], digits: int = 0) -> str:
    if not values:
        return "–"
    mean = f"{statistics.fmean(values):,.{digits}f}"
    return mean + (f" ± {statistics.stdev(values):,.{digits}f}" if len(values) > 1 else "")


def _per_seed(values: list[int | None]) -> str:
    return ", ".join("–" if v is None else str(v) for v in values)


def lambda_steps(options: dict[str, Any], lam: float, epochs: int, steps_per_epoch: int, steps: int) -> float:
    """Σ λ over the first ``steps`` optimizer steps of a run with these DRLoc ``options``."""
    schedule = options.get("schedule", "warmup_decay")
    decay = options.get("decay_epochs", options.get("lambda_decay_epochs"))
    warmup = options.get("warmup_epochs", options.get("lambda_warmup_epochs", 0)) or 0
    by_epoch = options.get("interval", "step") == "epoch"
    total = 0.0
    for step in range(steps):
        epoch = step // steps_per_epoch if by_epoch else step / steps_per_epoch
        # adaptive: anneal_from=None, λ held at its peak, as it was until its head had learned (after the onset)
        total += drloc_lambda(lam, epoch, epochs, schedule, warmup, decay_epochs=decay, anneal_from=None)
    return total


def job_onset(job: Any, lam: float, onset: float, learned: float) -> dict[str, Any] | None:
    curve = [value for _, value in read_curve(job.path, LOSS_COLUMN)]
    results = job.results
    epochs, global_step = results.get("epochs"), results.get("global_step")
    if not curve or not epochs or not global_step:
        return None
    options = results.get("drloc") or {}
    chance = float(results.get("drloc_chance_l1") or chance_l1(8, 8, options.get("target", "abs")))
    per_epoch = global_step // epochs

    def first_below(fraction: float) -> int | None:
        epoch = next((i for i, value in enumerate(curve) if value < fraction * chance), None)
        return None if epoch is None else (epoch + 1) * per_epoch

    onset_step = first_below(onset)
    return {
        "steps": global_step,
        "steps_per_epoch": per_epoch,
        "onset_step": onset_step,
        "lambda_steps": None if onset_step is None else lambda_steps(options, lam, epochs, per_epoch, onset_step),
        "learned_step": first_below(learned),
        "last_over_chance": curve[-1] / chance,
    }


def onset_rows(
    study_dirs: list[Path], onset: float, learned: float, cells: list[str] | None = None
) -> list[dict[str, Any]]:
    rows = []
    for study_dir in study_dirs:
        for row in load_study(study_dir):
            if cells and not any(fnmatch.fnmatchcase(row.cell, pattern) for pattern in cells):
                continue
            jobs = row.drloc.ok_jobs
            options = jobs[0].results.get("drloc", {}) if jobs else {}
            if not jobs or options.get("mode", "l1") != "l1" or options.get("stages", "last") != "last":
                continue  # the onset is read against the L1 chance of one grid
            lam = float(row.lam)
            runs = [r for r in (job_onset(job, lam, onset, learned) for job in jobs) if r is not None]
            if not runs:
                continue
            rows.append(
                {
                    "study": study_dir.name,
                    "cell": row.label,
                    "lambda": row.lam,
                    "schedule": options.get("schedule"),
                    "train_size": jobs[0].results.get("train_size"),
                    "steps": runs[0]["steps"],
                    "seeds": len(runs),
                    "onset_step": [r["onset_step"] for r in runs],
                    "lambda_steps": [r["lambda_steps"] for r in runs],
                    "learned_step": [r["learned_step"] for r in runs],
                    "last_over_chance": [r["last_over_chance"] for r in runs],
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]], onset: float, learned: float) -> str:
    lines = [
        f"| study | cell | λ | schedule | train imgs | steps | onset step (< {onset:g} × chance), per seed "
        f"| λ·steps at onset | step < {learned:g} × chance, per seed | last / chance |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reached = [v for v in r["lambda_steps"] if v is not None]
        lam_steps = _mean_std(reached) + (
            "" if len(reached) == len(r["lambda_steps"]) else f" ({len(reached)} of {r['seeds']})"
        )
        lines.append(
            f"| {r['study']} | {r['cell']} | {r['lambda']} | {r['schedule']} | {r['train_size']:,} | {r['steps']:,} "
            f"| {_per_seed(r['onset_step'])} | {lam_steps} | {_per_seed(r['learned_step'])} "
            f"| {_mean_std(r['last_over_chance'], 2)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dirs", nargs="+", type=Path)
    parser.add_argument("--onset", type=float, default=0.8, help="the onset: loss first below this fraction of chance")
    parser.add_argument("--learned", type=float, default=0.2, help="learned: loss first below this fraction of chance")
    parser.add_argument("--cells", nargs="+", help="only cells whose name matches one of these glob patterns")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "head_onset.json"))
    args = parser.parse_args()
    rows = onset_rows(args.study_dirs, args.onset, args.learned, args.cells)
    print(markdown(rows, args.onset, args.learned))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"onset": args.onset, "learned": args.learned, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
