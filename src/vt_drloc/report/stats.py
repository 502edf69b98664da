"""Statistics of the reports: mean ± std over seeds, and paired differences against λ = 0.

A paired difference subtracts, seed by seed, the baseline run that shares the DRLoc run's seed (and
so its data subset and initialisation), then takes the mean ± sample std over the seeds both ran.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Protocol

import pandas as pd


class BySeed(Protocol):
    """Runs that give a metric per seed (a sweep's ``Setting``)."""

    def by_seed(self, key: str) -> Mapping[int, float]: ...


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """Mean, sample std (None below two values) and count. Python's statistics, not pandas' mean / std: these
    are correctly rounded, so ``study.csv`` keeps its committed digits (pandas' float sums differ in the last bit)."""
    if not values:
        return None, None, 0
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std, len(values)


def paired_differences(setting: BySeed, baseline: BySeed, key: str) -> list[float]:
    """``setting - baseline`` seed by seed (aligned on the seed), over the seeds both ran successfully, in the
    setting's seed order."""
    mine = pd.Series(setting.by_seed(key), dtype="float64")
    base = pd.Series(baseline.by_seed(key), dtype="float64")
    return (mine - base.reindex(mine.index)).dropna().tolist()


def paired_delta(setting: BySeed, baseline: BySeed, key: str) -> tuple[float | None, float | None, int]:
    """Mean, std and count of :func:`paired_differences`."""
    return mean_std(paired_differences(setting, baseline, key))


__all__ = ["BySeed", "mean_std", "paired_delta", "paired_differences"]
