"""What a run reports: training throughput, ``results.json``, and the finite-ness of its final metrics."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from vt_drloc.base.files import write_atomic


class Throughput(pl.Callback):
    """Training images per second over the whole run, for ``results.json``: each training batch is
    timed from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward, optimizer
    step), so data-loader waits and validation are left out. On CUDA the device is synchronised
    once per epoch, at its last batch, not per step (a host sync in every step would stall the kernel
    queue the run is timing): work still queued then is counted in that batch's time.

    Lightning's ``ThroughputMonitor`` does not give this figure: it times from the start of training
    (data-loader waits included), synchronises every step, needs a ``batch_size_fn``, and hands its
    numbers only to a logger at log steps (with ``logger=False`` they go nowhere). ``Timer`` times
    whole stages, validation inside fit included. So this short callback stays."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        device = trainer.strategy.root_device
        if device.type == "cuda" and trainer.is_last_batch:
            torch.cuda.synchronize(device)
        self.seconds += time.perf_counter() - self._start
        self.images += int(batch[0].shape[0]) * trainer.world_size

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


def metric(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    return float(value.item() if hasattr(value, "item") else value)


def write_results(output_dir: Path, results: Mapping[str, Any]) -> Path:
    """Write ``results.json`` (atomically: temporary file, then rename)."""
    return write_atomic(
        output_dir / "results.json", json.dumps(results, indent=2, sort_keys=True, default=str).encode()
    )


def final_metrics(job_dir: Path) -> dict[str, float]:
    """The last logged value of every column of the job's CSV logger (``epoch`` / ``step`` excluded)."""
    files = sorted(Path(job_dir).rglob("metrics.csv"))
    last: dict[str, float] = {}
    if not files:
        return last
    with files[0].open(newline="") as handle:
        for row in csv.DictReader(handle):
            for key, text in row.items():
                if key in ("epoch", "step") or text in (None, ""):
                    continue
                try:
                    last[key] = float(text)
                except ValueError:
                    continue
    return last


def non_finite_metrics(results: dict[str, Any], job_dir: Path) -> list[str]:
    """``name=value`` of every non-finite accuracy in ``results`` and final loss / metric in the CSV log."""
    bad = []
    for key in ("val_acc1", "val_acc5", "best_val_acc1", "test_acc1", "test_acc5"):
        value = results.get(key)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            bad.append(f"{key}={value}")
    for key, value in final_metrics(job_dir).items():
        if not math.isfinite(value):
            bad.append(f"{key}={value}")
    return bad
