"""End-of-sweep summary: a Hydra callback that prints each job's swept values and accuracies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def collect_jobs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job folder of ``sweep_dir``: its overrides and ``results.json`` (or status 'failed')."""
    rows = []
    for job in sorted(Path(sweep_dir).iterdir(), key=lambda p: (len(p.name), p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            continue
        import yaml

        overrides = [o for o in (yaml.safe_load(overrides_file.read_text()) or []) if not o.startswith("hydra")]
        results_file = job / "results.json"
        results = json.loads(results_file.read_text()) if results_file.is_file() else {"status": "failed"}
        rows.append({"job": job.name, "overrides": overrides, **results})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def pct(value):
        return "-" if value is None else f"{100 * value:.2f}"

    lines = [f"{'job':>4}  {'test acc1':>9}  {'test acc5':>9}  {'wall s':>7}  {'status':>6}  overrides"]
    for r in rows:
        wall = r.get("wall_time_s")
        lines.append(
            f"{r['job']:>4}  {pct(r.get('test_acc1')):>9}  {pct(r.get('test_acc5')):>9}  "
            f"{'-' if wall is None else f'{wall:.0f}':>7}  {r.get('status', '?'):>6}  {' '.join(r['overrides'])}"
        )
    return "\n".join(lines)


class SweepSummary(Callback):
    """Prints a table of the sweep's jobs when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            print(f"\nSweep {sweep_dir}:\n{format_table(collect_jobs(sweep_dir))}")
