"""λ over training: constant (the paper's text), or the released warm-up then linear decay."""

from __future__ import annotations

import math

from vt_drloc.core.errors import DrLocConfigError, check_choice

SCHEDULES = ("constant", "warmup_decay", "adaptive")


# When λ changes: every optimizer step (fractional epoch) or once per epoch (the released loop).
LAMBDA_INTERVALS = ("step", "epoch")


def drloc_lambda(
    lambda_drloc: float,
    epoch: float,
    max_epochs: int | None = None,
    schedule: str = "warmup_decay",
    warmup_epochs: float = 20,
    decay_epochs: float | None = None,
    anneal_from: float | None = None,
) -> float:
    """λ at (fractional) ``epoch``.

    ``"constant"``: λ throughout (paper text). ``"warmup_decay"`` (released code): rises linearly
    from 0 to λ over ``warmup_epochs``, then falls linearly to reach 0 at epoch ``decay_epochs``
    (default: ``max_epochs``). The released runs trained 100 epochs with the decay horizon left at
    300, so λ ended at 5/7 of its peak; ``decay_epochs=300`` with ``max_epochs=100`` reproduces
    that. A run shorter than the warm-up never reaches the peak, as in the released code; use
    ``warmup_epochs`` proportionate to your run. Without a horizon there is no decay.

    ``"adaptive"``: the warm-up, then λ held until ``anneal_from`` (the epoch the head learned its
    task, decided by :class:`vt_drloc.faces.objective.DrLocObjective`; ``None``: not yet), then a
    linear fall from λ to 0 at the horizon.

    >>> [round(drloc_lambda(0.5, e, 100, "warmup_decay", 20, decay_epochs=300), 4) for e in (0, 1, 20, 50, 100)]
    [0.0, 0.025, 0.5, 0.4464, 0.3571]
    >>> [drloc_lambda(2.0, e, 30, "adaptive", 3, anneal_from=10) for e in (0, 3, 10, 20, 30)]
    [0.0, 2.0, 2.0, 1.0, 0.0]
    """
    check_choice("schedule", schedule, SCHEDULES)
    if lambda_drloc < 0 or not math.isfinite(lambda_drloc):
        raise DrLocConfigError(f"lambda_drloc={lambda_drloc} must be a finite number >= 0")
    if decay_epochs is not None and not (math.isfinite(decay_epochs) and decay_epochs > 0):
        raise DrLocConfigError(
            f"decay_epochs={decay_epochs} must be a number > 0 (the epoch at which λ reaches 0), or None for max_epochs"
        )
    if schedule == "constant" or lambda_drloc == 0:
        return float(lambda_drloc)
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return float(lambda_drloc) * max(epoch, 0.0) / warmup_epochs
    horizon = decay_epochs if decay_epochs is not None else max_epochs
    start = warmup_epochs
    if schedule == "adaptive":
        if anneal_from is None:
            return float(lambda_drloc)
        start = max(anneal_from, warmup_epochs)
        if epoch < start:
            return float(lambda_drloc)
    if horizon is None or horizon <= start:
        return float(lambda_drloc)
    remaining = (horizon - epoch) / (horizon - start)
    return float(lambda_drloc) * min(max(remaining, 0.0), 1.0)


def epoch_progress(epoch: int, batch_idx: int, num_batches: int | float | None, interval: str = "step") -> float:
    """The epoch the λ schedule is read at.

    ``interval="step"`` (default): fractional ``epoch + batch_idx / num_batches`` (``epoch`` when the
    number of batches is unknown or infinite), so λ moves smoothly, which matters in short runs.
    ``"epoch"``: the integer epoch, λ held for the whole epoch as in the released training loop. The
    two agree at the first step of every epoch.
    """
    check_choice("interval", interval, LAMBDA_INTERVALS)
    if interval == "epoch":
        return float(epoch)
    fraction = batch_idx / num_batches if isinstance(num_batches, int) and num_batches > 0 else 0.0
    return epoch + fraction
