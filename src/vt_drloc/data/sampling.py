"""Stratified, seeded subsets: the small-data regime and the validation hold-out.

Both depend only on the labels (in the dataset's sorted sample order), the requested size and the
seed -- never on the process, rank or worker -- so every DDP rank and every rerun selects the same
samples, and a tar archive and its extracted folder give the same subset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Separate random streams, so the hold-out does not change when the subset seed changes.
_SUBSET_STREAM = 0
_HOLDOUT_STREAM = 1


def per_class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of samples of each class."""
    return np.bincount(np.asarray(labels, np.int64), minlength=num_classes)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5).astype(np.int64)


def _pick(labels: np.ndarray, take: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    chosen = []
    for c, k in enumerate(take):
        members = np.flatnonzero(labels == c)
        perm = rng.permutation(len(members))
        chosen.append(members[perm[:k]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def stratified_subset(
    labels: np.ndarray,
    num_classes: int,
    *,
    samples_per_class: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    what: str = "train split",
) -> np.ndarray:
    """Sorted indices of a per-class random subset of ``labels``.

    ``samples_per_class=k`` takes ``k`` samples of every class (an error names a class with fewer);
    ``fraction=f`` takes ``round(f * n_c)`` of each class ``c``, at least one. Exactly one of the two
    must be given.
    """
    labels = np.asarray(labels, np.int64)
    counts = per_class_counts(labels, num_classes)
    if (samples_per_class is None) == (fraction is None):
        raise ValueError("give exactly one of samples_per_class and fraction")
    if samples_per_class is not None:
        k = int(samples_per_class)
        short = np.flatnonzero(counts < k)
        if short.size:
            c = int(short[np.argmin(counts[short])])
            name = class_names[c] if class_names is not None else str(c)
            raise ValueError(
                f"samples_per_class={k} is larger than the {what} has for class {c} ({name!r}: "
                f"{counts[c]} samples; {short.size} class(es) have fewer than {k}). Use "
                f"samples_per_class <= {int(counts.min())} (the smallest class) or train_fraction"
            )
        take = np.full(num_classes, k, np.int64)
    else:
        take = np.minimum(np.maximum(_round_half_up(counts * float(fraction)), 1), counts)
    rng = np.random.default_rng([int(seed), _SUBSET_STREAM])
    return _pick(labels, take, rng)


def stratified_holdout(
    labels: np.ndarray, num_classes: int, *, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into ``(keep, holdout)``: ``round(fraction * n_c)`` of each class held out.

    At least one sample of each class with two or more samples is held out and at least one is kept.
    """
    labels = np.asarray(labels, np.int64)
    counts = per_class_counts(labels, num_classes)
    take = np.clip(_round_half_up(counts * float(fraction)), 1, np.maximum(counts - 1, 0))
    take = np.where(counts >= 2, take, 0)
    rng = np.random.default_rng([int(seed), _HOLDOUT_STREAM])
    holdout = _pick(labels, take, rng)
    keep = np.setdiff1d(np.arange(len(labels)), holdout, assume_unique=True)
    return keep, holdout
