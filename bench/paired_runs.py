"""Paired Δ between two sets of runs that differ in something other than λ, seed by seed.

The report pairs a sweep's DRLoc runs with its λ = 0 runs. Some questions compare runs that all
train at the same λ and differ in where they start, e.g. fine-tuning without DRLoc from a backbone
pretrained without it (baseline) against one pretrained with it (treatment). This pairs the
successful jobs of two sweep dirs on their seed, optionally keeping only jobs whose ``results.json``
matches ``--where key=value``, and prints one table row per comparison (the report's
``paired_differences``, so the Δ is computed as in every study table).

    python bench/paired_runs.py --label "DRLoc in pretraining only" \\
        --baseline studies/study_cifar10/ft5_cvt --treatment studies/pretrain/ft5_cvt_ptdrloc \\
        --where lambda_drloc=0 [--json bench/results/paired_runs.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vt_drloc.report.stats import mean_std, paired_differences  # noqa: E402
from vt_drloc.report.sweep import Setting, SweepError, as_number, hashable, load_sweep  # noqa: E402

METRICS = (("test_acc1", "test acc1"), ("val_acc1", "val acc1"))


def _matches(results: dict[str, Any], where: dict[str, str]) -> bool:
    for key, wanted in where.items():
        value, number = results.get(key), as_number(wanted)
        if number is not None and isinstance(value, (int, float)):
            if float(value) != number:
                return False
        elif str(value) != wanted:
            return False
    return True


def select(sweep_dir: Path, where: dict[str, str]) -> Setting:
    """The successful jobs of ``sweep_dir`` whose results match ``where``, as one :class:`Setting`."""
    jobs = [job for job in load_sweep(sweep_dir).jobs if job.ok and _matches(job.results, where)]
    seeds = [hashable(job.seed) for job in jobs]
    doubled = sorted({str(s) for s in seeds if seeds.count(s) > 1})
    if doubled:  # two runs of one seed (e.g. λ = 0 and λ = 1): pairing would pick one silently
        raise ValueError(
            f"{sweep_dir} holds more than one successful run of seed {', '.join(doubled)}"
            f"{' matching ' + str(where) if where else ''}; pass --where key=value (a results.json field, "
            "e.g. lambda_drloc=0) so that each seed has one run."
        )
    return Setting(values={}, jobs=jobs)


def compare(label: str, baseline_dir: Path, treatment_dir: Path, where: dict[str, str]) -> dict[str, Any]:
    baseline, treatment = select(baseline_dir, where), select(treatment_dir, where)
    row: dict[str, Any] = {"label": label, "baseline": str(baseline_dir), "treatment": str(treatment_dir)}
    row["where"] = where
    for key, _ in METRICS:
        row[key] = {
            "baseline": sorted(baseline.by_seed(key).items()),
            "treatment": sorted(treatment.by_seed(key).items()),
            "delta": paired_differences(treatment, baseline, key),
        }
    return row


def _pct(values: list[float], signed: bool = False) -> str:
    mean, std, n = mean_std([100 * v for v in values])
    if mean is None:
        return "–"
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text + (f" ± {std:.2f}" if std is not None else "") + (f" (n={n})" if signed else "")


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| comparison | baseline | treatment | baseline test acc1 | treatment test acc1 | Δ test acc1 "
        "| Δ per seed | Δ val acc1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        test, val = row["test_acc1"], row["val_acc1"]
        per_seed = ", ".join(f"{100 * d:+.2f}" for d in test["delta"]) or "–"
        lines.append(
            f"| {row['label']} | `{row['baseline']}` | `{row['treatment']}` "
            f"| {_pct([v for _, v in test['baseline']])} | {_pct([v for _, v in test['treatment']])} "
            f"| {_pct(test['delta'], signed=True)} | {per_seed} | {_pct(val['delta'], signed=True)} |"
        )
    return "\n".join(lines)


def _where(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--where {text!r}: expected key=value, e.g. lambda_drloc=0")
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--baseline", type=Path, required=True, help="sweep dir of the baseline runs")
    parser.add_argument("--treatment", type=Path, required=True, help="sweep dir of the treatment runs")
    parser.add_argument("--where", type=_where, action="append", default=[], help="results.json key=value")
    parser.add_argument("--json", type=Path, default=Path("bench/results/paired_runs.json"))
    args = parser.parse_args(argv)
    try:
        row = compare(args.label, args.baseline, args.treatment, dict(args.where))
    except (ValueError, SweepError) as err:  # two runs of one seed; a folder that is not a sweep dir
        print(err, file=sys.stderr)
        return 2
    if len(row["test_acc1"]["delta"]) < 1:
        print(
            f"No seed ran successfully in both {args.baseline} and {args.treatment}"
            f"{' with ' + str(dict(args.where)) if args.where else ''}: nothing to pair.",
            file=sys.stderr,
        )
        return 2
    print(markdown([row]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([row], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
