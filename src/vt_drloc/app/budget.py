"""A floor on optimizer steps: small data sets train for longer, with every schedule stretched alike.

When the DRLoc head starts learning its task follows optimizer steps and λ, not epochs or images
(docs/results.md, "Less data"; ``bench/head_onset.py``): at λ = 1 it leaves its plateau near chance
after about 165-280 steps whatever the data size, and fewer images then need more steps to bring it
down; 30 epochs of 250 images are 90 steps and it never starts. ``min_train_steps`` lifts a run
whose ``trainer.max_epochs`` give fewer steps than that floor (the study recipes: 900): every
epoch-denominated setting (the run's length, the LR warm-up and decay, λ's warm-up and decay, the
validation interval) is multiplied by one integer factor, so each schedule keeps its shape and the
baseline (λ = 0) gets the same budget as the DRLoc run it is paired with.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from vt_drloc.app.config import UserError

# settings counted in epochs, stretched together (absent or null ones are left alone: null decay
# epochs already follow trainer.max_epochs)
EPOCH_KEYS = (
    "trainer.max_epochs",
    "trainer.check_val_every_n_epoch",
    "optim.lr_warmup_epochs",
    "optim.lr_decay_epochs",
    "drloc.lambda_warmup_epochs",
    "drloc.lambda_decay_epochs",
)


def check_min_train_steps(value: Any) -> int | None:
    """``min_train_steps``: null (no floor) or an integer >= 1; anything else is a :class:`UserError`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(
            f"min_train_steps={value!r} is invalid: use an integer >= 1 (optimizer steps), or null for no floor."
        )
    return value


def epoch_factor(min_steps: int | None, steps_per_epoch: int, max_epochs: int) -> int:
    """The integer by which ``max_epochs`` epochs of ``steps_per_epoch`` steps must grow to reach ``min_steps``.

    >>> epoch_factor(450, 3, 30), epoch_factor(450, 15, 30), epoch_factor(None, 3, 30)
    (5, 1, 1)
    """
    if not min_steps or steps_per_epoch <= 0 or steps_per_epoch * max_epochs >= min_steps:
        return 1
    return math.ceil(min_steps / (steps_per_epoch * max_epochs))


def steps_per_epoch(datamodule: Any, cfg: DictConfig) -> int | None:
    """Optimizer steps per epoch on each process, or None when the run sets its own length in steps
    or batches (``trainer.max_steps``, ``trainer.limit_train_batches``)."""
    trainer = cfg.trainer
    if trainer.get("max_steps", -1) not in (-1, None) or trainer.get("limit_train_batches", 1.0) not in (1.0, None):
        return None
    devices = trainer.get("devices", 1)
    world = (devices if isinstance(devices, int) and devices > 0 else 1) * int(trainer.get("num_nodes", 1) or 1)
    batches = math.ceil(len(datamodule.train_dataloader()) / world)
    return batches // int(trainer.get("accumulate_grad_batches", 1) or 1)


def stretch_to_min_steps(cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """Multiply ``cfg``'s epoch settings (:data:`EPOCH_KEYS`) in place when its epochs give fewer than
    ``cfg.min_train_steps`` optimizer steps; returns what was done, for the log and results.json."""
    floor = check_min_train_steps(cfg.get("min_train_steps"))
    per_epoch = steps_per_epoch(datamodule, cfg) if floor else None
    factor = epoch_factor(floor, per_epoch or 0, int(cfg.trainer.max_epochs))
    record: dict[str, Any] = {"min_train_steps": floor, "epoch_factor": factor, "steps_per_epoch": per_epoch}
    if factor == 1:
        return record
    changed = {}
    with open_dict(cfg):
        for key in EPOCH_KEYS:
            value = OmegaConf.select(cfg, key)
            if isinstance(value, int) and not isinstance(value, bool):
                OmegaConf.update(cfg, key, value * factor, merge=False)
                changed[key] = [value, value * factor]
    record["stretched"] = changed
    return record
