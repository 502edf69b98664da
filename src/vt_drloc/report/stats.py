"""Statistics of the reports: mean ± std over seeds, and paired differences against λ = 0.

A paired difference subtracts, seed by seed, the baseline run that shares the DRLoc run's seed (and
so its data subset and initialisation), then takes the mean ± sample std over the seeds both ran.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vt_drloc.report.sweep import Setting


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    if not values:
        return None, None, 0
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std, len(values)


def paired_delta(setting: Setting, baseline: Setting, key: str) -> tuple[float | None, float | None, int]:
    """Mean, std and count of ``setting - baseline`` over the seeds both ran successfully."""
    mine, base = setting.by_seed(key), baseline.by_seed(key)
    diffs = [mine[s] - base[s] for s in mine if s in base]
    return mean_std(diffs)


__all__ = ["mean_std", "paired_delta"]
