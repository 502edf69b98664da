"""Where a long run is: the ETA of the whole run, and a warning when the DRLoc head is not learning.

The progress bar shows the current epoch only; :class:`RunProgress` logs one line per training epoch with
the steps done, the time spent and the time left for the whole run, from the mean time per optimizer step
so far (validation included). After λ's warm-up it checks the head's epoch-mean L1 against chance
(:func:`vt_drloc.core.chance_l1`): a head still near chance adds nothing to the loss but noise, and
docs/results.md ("Choosing λ at small budgets") says what λ made it learn.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl

from vt_drloc.faces.objective import DrLocObjective

log = logging.getLogger(__name__)

LAMBDA_ADVICE = 'docs/results.md, "Choosing λ at small budgets"'


def format_duration(seconds: float) -> str:
    """``h:mm:ss``; ``?`` when unknown (an endless run).

    >>> format_duration(3725.4), format_duration(float("inf"))
    ('1:02:05', '?')
    """
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_eta(elapsed_s: float, steps_done: int, steps_left: float) -> float:
    """Seconds left for ``steps_left`` steps at the mean pace of the ``steps_done`` so far (inf: unknown).

    >>> run_eta(60.0, 10, 30)
    180.0
    """
    if steps_left <= 0:
        return 0.0
    if steps_done <= 0 or not math.isfinite(steps_left):
        return math.inf
    return elapsed_s / steps_done * steps_left


def find_objective(trainer: pl.Trainer, pl_module: pl.LightningModule) -> DrLocObjective | None:
    """The DRLoc objective of the module (DrLocModule) or of a callback (DrLocCallback); None without DRLoc."""
    for holder in (pl_module, *trainer.callbacks):
        objective = getattr(holder, "objective", None)
        if isinstance(objective, DrLocObjective):
            return objective
    return None


class RunProgress(pl.Callback):
    """Logs the whole run's progress and ETA at every training epoch end; warns once when the DRLoc
    head's L1 is still above ``not_learning_ratio`` of chance after λ's warm-up (mode ``l1``, λ > 0)."""

    def __init__(self, not_learning_ratio: float = 0.9):
        if not 0 < not_learning_ratio:
            raise ValueError(
                f"not_learning_ratio={not_learning_ratio!r} must be > 0 (a fraction of chance L1, e.g. 0.9)"
            )
        self.not_learning_ratio = not_learning_ratio
        self.warned = False
        self._start = 0.0
        self._start_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()
        self._start_step = trainer.global_step  # a resumed run: its pace is measured from here

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        total = trainer.estimated_stepping_batches  # max_steps or max_epochs, whichever ends the run first
        elapsed = time.monotonic() - self._start
        eta = run_eta(elapsed, trainer.global_step - self._start_step, total - trainer.global_step)
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        total_text = int(total) if math.isfinite(total) else "?"
        if trainer.is_global_zero:
            log.info(
                "epoch %d/%s done, step %d/%s, elapsed %s, run ETA %s",
                trainer.current_epoch + 1,
                epochs,
                trainer.global_step,
                total_text,
                format_duration(elapsed),
                format_duration(eta),
            )
        self.check_head(trainer, pl_module)

    def check_head(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
        """The head's L1 / chance this epoch (None when not measured); warns once when it is near chance."""
        objective = find_objective(trainer, pl_module)
        value = trainer.callback_metrics.get("train/drloc_epoch")
        if objective is None or objective.loss is None or value is None:
            return None
        config = objective.config
        if config.mode != "l1" or config.lambda_drloc <= 0:
            return None
        chance = objective.loss.chance_l1()
        if not chance:
            return None
        ratio = float(value) / chance
        warmup = config.lambda_warmup_epochs if config.schedule != "constant" else 0.0
        if self.warned or trainer.current_epoch + 1 < max(1.0, warmup) or ratio < self.not_learning_ratio:
            return ratio
        self.warned = True
        if trainer.is_global_zero:
            log.warning(
                "The DRLoc head is not learning: after epoch %d (λ warm-up of %g epochs over) its L1 is %.2f of "
                "chance (warning above %.2f; a head that learns falls well below it). At drloc.lambda_drloc=%g it "
                "adds noise, not a localization signal: try a larger λ or a longer run, see %s.",
                trainer.current_epoch + 1,
                warmup,
                ratio,
                self.not_learning_ratio,
                config.lambda_drloc,
                LAMBDA_ADVICE,
            )
        return ratio

    def state_dict(self) -> dict[str, Any]:
        return {"warned": self.warned}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.warned = bool(state_dict.get("warned", False))
