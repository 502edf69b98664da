"""The DRLoc objective that both faces train with: options, loss + head, λ schedule, pair sampler,
checkpoint state and the metrics of a step, written once.

:class:`~vt_drloc.faces.module.DrLocModule` and :class:`~vt_drloc.faces.callback.DrLocCallback` differ only in
how they reach the grid (their own forward vs. a hook in the user's module) and where the head
lives; each calls :meth:`DrLocObjective.step` with the grid of the training forward and its batch index,
adds λ·L_drloc to its loss and logs the step's metrics (:func:`log_step`).

Options carry one name everywhere: :class:`DrLocConfig`'s fields are the keyword arguments of
both faces and the keys of ``conf/drloc``. The names of vt_drloc 0.1 (``drloc_mode``,
``lambda_schedule``, ...) are still accepted (:data:`LEGACY_NAMES`), so older checkpoints and
scripts keep working.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor

from vt_drloc.core import (
    DrLocLoss,
    drloc_lambda,
    epoch_progress,
    pair_generator,
    reduced_grid_hw,
    resolve_hidden_dims,
)
from vt_drloc.core.errors import DrLocConfigError, DrLocOptionError
from vt_drloc.core.stages import MultiScaleDrLocLoss, check_stages
from vt_drloc.core.tap import check_tap_norm

# vt_drloc 0.1 keyword -> DrLocConfig field
LEGACY_NAMES = {
    "drloc_mode": "mode",
    "drloc_target": "target",
    "head_hidden_dims": "hidden_dims",
    "lambda_schedule": "schedule",
    "lambda_interval": "interval",
    "drloc_seed": "seed",
}
# vt_drloc 0.2 name -> DrLocConfig field (issue 27: one meaning per name): accepted until vt_drloc 0.3, each
# with one FutureWarning. warmup_epochs / decay_epochs were λ's here but the learning rate's in conf/optim.
RENAMED_OPTIONS = {
    "sample_size": "num_pairs",
    "grid_size": "pool_target",
    "warmup_epochs": "lambda_warmup_epochs",
    "decay_epochs": "lambda_decay_epochs",
}


def warn_renamed(old: str, new: str, what: str = "DRLoc option") -> None:
    """The one warning of an old name: FutureWarning, so that it shows in scripts and on the command line."""
    import warnings

    warnings.warn(f"{what} {old!r} is now {new!r}; the old name works until vt_drloc 0.3", FutureWarning, stacklevel=4)


def _is_real(value: Any) -> bool:
    """A number (numpy's included), not a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def plain(value: Any) -> Any:
    """An OmegaConf container as plain Python (dicts / lists); anything else unchanged. Without
    OmegaConf imported nothing can be one, so the faces work where it is not installed."""
    omegaconf = sys.modules.get("omegaconf")
    if omegaconf is None or not isinstance(value, (omegaconf.DictConfig, omegaconf.ListConfig)):
        return value
    return omegaconf.OmegaConf.to_container(value, resolve=True)


@dataclass
class DrLocConfig:
    """Every DRLoc option, checked on construction (before any model is built).

    Attributes:
        lambda_drloc: λ, the weight of the DRLoc loss (paper: 0.5 Swin-T, 0.1 CvT-13 / T2T-ViT-14;
            ``0`` = no DRLoc).
        num_pairs: m, the pairs of cells sampled per image (the loss's ``sample_size``).
        pool_target: k, the side the final grid is average-pooled towards: a grid of side >= 2k is
            halved until it is smaller (``None``: never pooled); the loss's ``grid_size``.
        mode, target, hidden_dims, head_init, class_head: the loss and its head, see
            :class:`vt_drloc.core.DrLocLoss`.
        tap_norm: ``"pre"`` / ``"post"``: read the grid before / after the backbone's final norm
            (:mod:`vt_drloc.core.tap`).
        schedule, lambda_warmup_epochs, lambda_decay_epochs: λ over training, see
            :func:`vt_drloc.core.drloc_lambda` (``lambda_decay_epochs=None``: λ reaches 0 at ``max_epochs``).
        task_threshold: ``schedule="adaptive"`` only: λ is held at its peak until the head's
            training L1 (a running mean over ~10 steps) falls below this fraction of chance
            (:func:`vt_drloc.core.chance_l1`), then falls linearly to 0 at the horizon.
        interval: ``"step"`` (λ at the fractional epoch of every step) or ``"epoch"`` (held per
            epoch, as the released loop), see :func:`vt_drloc.core.epoch_progress`.
        seed: pair-sampler seed (``None``: derived from the run's seed), plus the rank.
        head_weight_decay: weight decay of the head's weights (its biases never decay); ``None``:
            the optimizer's, as the released code (one AdamW over backbone and head).
        stages: ``"last"`` (the final grid, the paper's DRLoc), ``"all"`` (multi-scale: every stage of a
            hierarchical backbone, a head each, losses summed, as the released Swin option) or a list of
            stage indices (0 = the finest, -1 = the final grid); see :mod:`vt_drloc.core.stages`.

    >>> DrLocConfig(lambda_drloc=1.0, schedule="constant").schedule
    'constant'
    >>> DrLocConfig(mode="l2")
    Traceback (most recent call last):
    ...
    ValueError: mode='l2' is not valid; choose one of 'l1', 'ce', 'cbr'
    """

    lambda_drloc: float = 0.1
    mode: str = "l1"
    num_pairs: int = 64
    target: str = "abs"
    hidden_dims: Any = "released"
    head_init: str = "released"
    class_head: str = "released"
    pool_target: int | None = 7
    tap_norm: str = "pre"
    schedule: str = "warmup_decay"
    lambda_warmup_epochs: float = 20
    lambda_decay_epochs: float | None = None
    interval: str = "step"
    seed: int | None = None
    task_threshold: float = 0.3
    head_weight_decay: float | None = None
    stages: Any = "last"

    def __post_init__(self) -> None:
        self.stages = check_stages(plain(self.stages))
        hidden = plain(self.hidden_dims)
        self.hidden_dims = hidden if isinstance(hidden, str) else [int(d) for d in hidden]
        if not (_is_real(self.lambda_drloc) and math.isfinite(self.lambda_drloc) and self.lambda_drloc >= 0):
            raise DrLocConfigError(
                f"lambda_drloc={self.lambda_drloc!r} must be a number >= 0 (0 = baseline without DRLoc)"
            )
        if not (_is_integer(self.num_pairs) and self.num_pairs >= 1):
            raise DrLocConfigError(f"num_pairs={self.num_pairs!r} must be an integer >= 1 (the paper uses 64)")
        if self.pool_target is not None and not (_is_integer(self.pool_target) and self.pool_target >= 2):
            raise DrLocConfigError(
                f"pool_target={self.pool_target!r} must be an integer >= 2, or None to never pool the grid"
            )
        decay = self.lambda_decay_epochs
        if decay is not None and not (_is_real(decay) and math.isfinite(decay) and decay > 0):
            raise DrLocConfigError(
                f"lambda_decay_epochs={decay!r} must be a number > 0 (the epoch at which λ reaches 0), or None for "
                "max_epochs"
            )
        self.lambda_drloc = float(self.lambda_drloc)
        self.num_pairs = int(self.num_pairs)
        check_tap_norm(self.tap_norm)
        resolve_hidden_dims(self.hidden_dims)
        drloc_lambda(self.lambda_drloc, 0.0, None, self.schedule, self.lambda_warmup_epochs, self.lambda_decay_epochs)
        epoch_progress(0, 0, None, self.interval)
        warmup = self.lambda_warmup_epochs
        if not (_is_real(warmup) and math.isfinite(warmup) and warmup >= 0):
            raise DrLocConfigError(f"lambda_warmup_epochs={warmup!r} must be a number >= 0 (the released runs: 20)")
        if self.seed is not None and not (_is_integer(self.seed) and self.seed >= 0):
            raise DrLocConfigError(
                f"seed={self.seed!r} must be an integer >= 0, or None to derive it from the run's seed"
            )
        if self.head_weight_decay is not None and not (
            math.isfinite(float(self.head_weight_decay)) and self.head_weight_decay >= 0
        ):
            raise DrLocConfigError(
                f"head_weight_decay={self.head_weight_decay} must be >= 0, or None for the optimizer's weight decay"
            )
        if not 0 < float(self.task_threshold) <= 1:
            raise DrLocConfigError(
                f"task_threshold={self.task_threshold} must lie in (0, 1] (a fraction of the chance L1)"
            )
        if self.schedule == "adaptive" and self.mode != "l1":
            raise DrLocConfigError(
                f"schedule='adaptive' reads the head's L1 against chance: it needs mode='l1', not mode={self.mode!r}"
            )
        # the loss's own checks (mode x target, ...) on a dummy grid; its head's
        # initialisation must not move the global RNG (the backbone built next draws from it)
        with torch.random.fork_rng(devices=[]):
            DrLocLoss(1, **self.loss_kwargs(), grid_hw=(2, 2))

    def loss_kwargs(self) -> dict[str, Any]:
        """The :class:`~vt_drloc.core.DrLocLoss` arguments among the options."""
        return {
            "mode": self.mode,
            "sample_size": self.num_pairs,
            "target": self.target,
            "hidden_dims": self.hidden_dims,
            "grid_size": self.pool_target,
            "head_init": self.head_init,
            "class_head": self.class_head,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def build(cls, drloc: DrLocConfig | Mapping[str, Any] | None = None, **options: Any) -> DrLocConfig:
        """A config from a ``DrLocConfig`` or mapping (e.g. ``cfg.drloc``) updated by keyword options;
        vt_drloc 0.1 names are accepted, the names of 0.2 (:data:`RENAMED_OPTIONS`) with a warning; an unknown
        name raises."""
        valid = {f.name for f in fields(cls)}
        merged: dict[str, Any] = {}
        sources = [drloc.as_dict() if isinstance(drloc, DrLocConfig) else dict(plain(drloc) or {}), options]
        for source in sources:
            seen: set[str] = set()
            for key, value in source.items():
                if key == "_target_":
                    continue
                name = LEGACY_NAMES.get(key, key)
                if key in RENAMED_OPTIONS:
                    name = RENAMED_OPTIONS[key]
                    warn_renamed(key, name)
                if name not in valid:
                    raise DrLocOptionError(f"unknown DRLoc option {key!r}; valid options: {', '.join(sorted(valid))}")
                if name in seen:
                    raise DrLocOptionError(
                        f"DRLoc option {name!r} given twice (as {name!r} and its old name); give it once"
                    )
                seen.add(name)
                merged[name] = value
        return cls(**merged)


class DrLocObjective:
    """What a face needs to add λ·L_drloc to its loss: the :class:`~vt_drloc.core.DrLocLoss` (built
    for the probed grid), λ for the current step, the pair sampler and its checkpoint state.

    The loss is a plain attribute: the face registers it as its own submodule (``DrLocModule.drloc``,
    the callback's ``_drloc_loss``), so state-dict keys stay where they were.

    >>> objective = DrLocObjective(DrLocConfig(lambda_drloc=1.0, schedule="constant"))
    >>> loss = objective.build_loss(channels=16, grid_hw=(8, 8))
    >>> objective.lambda_at(epoch=0, batch_idx=0, num_batches=10, max_epochs=30)
    1.0
    >>> step = objective.step(torch.randn(2, 16, 8, 8), trainer=None, batch_idx=0)
    >>> step.lam, sorted(step.metrics)
    (1.0, ['train/drloc', 'train/lambda'])
    """

    def __init__(self, config: DrLocConfig):
        self.config = config
        self.loss: DrLocLoss | MultiScaleDrLocLoss | None = None
        self._generator: torch.Generator | None = None
        self._generator_state: Tensor | None = None
        self._pending_head_state: Mapping[str, Tensor] | None = None
        # schedule="adaptive": running mean of L_drloc / chance, and the epoch annealing began
        self.task_ratio: float | None = None
        self.anneal_from: float | None = None

    @property
    def num_head_params(self) -> int:
        return 0 if self.loss is None else sum(p.numel() for p in self.loss.parameters())

    def build_loss(self, channels: int, grid_hw: tuple[int, int]) -> DrLocLoss | MultiScaleDrLocLoss:
        """The loss for one (channels, H, W) grid; see :meth:`build_losses`."""
        return self.build_losses([(channels, grid_hw)])

    def build_losses(self, specs: Sequence[tuple[int, tuple[int, int]]]) -> DrLocLoss | MultiScaleDrLocLoss:
        """The loss for the grids ``specs`` (``(channels, (H, W))`` each, finest first): a
        :class:`~vt_drloc.core.DrLocLoss` for one grid, a :class:`~vt_drloc.core.stages.MultiScaleDrLocLoss`
        for several. The current one is kept when it fits (a second fit, or a resumed head), and a head state
        loaded before the loss existed is applied now."""
        wanted = tuple((int(c), reduced_grid_hw((int(h), int(w)), self.config.pool_target)) for c, (h, w) in specs)
        loss = self.loss
        if loss is None or loss.spec != wanted:
            if len(specs) == 1:
                channels, (height, width) = specs[0]
                loss = DrLocLoss(int(channels), **self.config.loss_kwargs(), grid_hw=(int(height), int(width)))
            else:
                loss = MultiScaleDrLocLoss(specs, **self.config.loss_kwargs())
        if self._pending_head_state is not None:
            loss.load_state_dict(self._pending_head_state)
            self._pending_head_state = None
        self.loss = loss
        return loss

    # ------------------------------------------------------------------ λ
    def lambda_at(self, epoch: int, batch_idx: int, num_batches: int | float | None, max_epochs: int | None) -> float:
        """λ at batch ``batch_idx`` of ``epoch``.

        ``max_epochs``: the decay horizon when ``lambda_decay_epochs`` is None.
        """
        c = self.config
        progress = epoch_progress(epoch, batch_idx, num_batches, c.interval)
        return drloc_lambda(
            c.lambda_drloc,
            progress,
            max_epochs,
            c.schedule,
            c.lambda_warmup_epochs,
            c.lambda_decay_epochs,
            self.anneal_from,
        )

    def observe(self, drloc: float, epoch: float) -> None:
        """``schedule="adaptive"``: track the head's L1 / chance and start annealing once it is below
        ``task_threshold`` (after the warm-up)."""
        chance = None if self.loss is None else self.loss.chance_l1()
        assert chance is not None, "observe() runs after build_loss(), in mode='l1'"
        ratio = drloc / chance
        self.task_ratio = ratio if self.task_ratio is None else 0.9 * self.task_ratio + 0.1 * ratio
        if (
            self.anneal_from is None
            and epoch >= self.config.lambda_warmup_epochs
            and self.task_ratio < self.config.task_threshold
        ):
            self.anneal_from = float(epoch)

    def schedule_state(self) -> dict[str, float | None]:
        return {"task_ratio": self.task_ratio, "anneal_from": self.anneal_from}

    def load_schedule_state(self, state: Mapping[str, Any] | None) -> None:
        if state:
            self.task_ratio, self.anneal_from = state.get("task_ratio"), state.get("anneal_from")

    def current_lambda(self, trainer: Any | None, batch_idx: int = 0) -> float:
        """λ at batch ``batch_idx`` of the trainer's current epoch (the schedule's start without a trainer)."""
        if trainer is None:
            return self.lambda_at(0, 0, None, None)
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        return self.lambda_at(trainer.current_epoch, batch_idx, trainer.num_training_batches, max_epochs)

    # ------------------------------------------------------------------ sampler
    def sampler(self, device: torch.device, rank: int = 0) -> torch.Generator:
        """The pair sampler on ``device`` (seeded per rank; restored from a checkpoint when one was loaded)."""
        if self._generator is None or self._generator.device != device:
            self._generator = pair_generator(device, self.config.seed, rank, self._generator_state)
            self._generator_state = None
        return self._generator

    def sampler_state(self) -> Tensor | None:
        if self._generator is not None:
            return self._generator.get_state()
        return self._generator_state

    def load_sampler_state(self, state: Tensor | None) -> None:
        if state is not None:
            self._generator_state = state.cpu()
            self._generator = None

    def load_head_state(self, state: Mapping[str, Tensor]) -> None:
        """Load the head now, or when :meth:`build_loss` creates it."""
        if self.loss is not None:
            self.loss.load_state_dict(state)
        else:
            self._pending_head_state = state

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint must hold to resume DRLoc exactly: ``sampler_state`` (once sampling began
        or one was loaded) and, for ``schedule="adaptive"``, ``schedule_state``."""
        state: dict[str, Any] = {}
        sampler = self.sampler_state()
        if sampler is not None:
            state["sampler_state"] = sampler
        if self.config.schedule == "adaptive":
            state["schedule_state"] = self.schedule_state()
        return state

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` wrote (missing keys leave that part as it is)."""
        self.load_sampler_state(state.get("sampler_state"))
        self.load_schedule_state(state.get("schedule_state"))

    # ------------------------------------------------------------------ the step
    def step(self, grid: Tensor | Sequence[Tensor], trainer: Any | None, batch_idx: int) -> DrLocStep:
        """L_drloc of ``grid`` (B, C, H, W; multi-scale: one per stage, finest first) at batch ``batch_idx``
        of the trainer's epoch, λ for it, and the metrics to log (see :func:`log_step`). The caller adds
        ``λ · L_drloc`` to its loss."""
        assert self.loss is not None, "build_loss() first"
        grids = [grid] if isinstance(grid, Tensor) else list(grid)
        rank = trainer.global_rank if trainer is not None else 0
        generator = self.sampler(grids[0].device, rank)
        stage_losses: list[Tensor] = []
        if isinstance(self.loss, MultiScaleDrLocLoss):
            stage_losses = self.loss.stage_losses(grids, generator=generator)
            drloc = torch.stack(stage_losses).sum()
        else:
            if len(grids) != 1:
                raise DrLocConfigError(f"this DRLoc loss reads one grid, got {len(grids)}")
            drloc = self.loss(grids[0], generator=generator)
        lam = self.current_lambda(trainer, batch_idx)
        metrics: dict[str, Tensor | float] = {"train/drloc": drloc, "train/lambda": lam}
        metrics.update({f"train/drloc_stage{i}": value.detach() for i, value in enumerate(stage_losses)})
        if self.config.schedule == "adaptive":
            # each rank decides from its own loss (their running means agree closely)
            epoch = (
                0.0
                if trainer is None
                else epoch_progress(trainer.current_epoch, batch_idx, trainer.num_training_batches)
            )
            self.observe(float(drloc.detach()), epoch)
            assert self.task_ratio is not None
            metrics["train/drloc_over_chance"] = self.task_ratio
        return DrLocStep(drloc, lam, metrics)


@dataclass(frozen=True)
class DrLocStep:
    """What :meth:`DrLocObjective.step` returns: L_drloc (unweighted), λ, and the metrics a face logs."""

    drloc: Tensor
    lam: float
    metrics: dict[str, Tensor | float]


# how each metric of a step is logged: L_drloc per step and epoch (averaged over ranks), the others per step
LOG_OPTIONS = {
    "train/drloc": {"on_step": True, "on_epoch": True, "sync_dist": True},
    "train/lambda": {"on_step": True, "on_epoch": False},
    "train/drloc_over_chance": {"on_step": True, "on_epoch": False},
}


# multi-scale: each stage's L_drloc, per epoch (``train/drloc`` is their sum)
STAGE_LOG_OPTIONS = {"on_step": False, "on_epoch": True, "sync_dist": True}


def log_step(module: Any, step: DrLocStep) -> None:
    """Log a step's metrics through the LightningModule ``module`` (both faces call this)."""
    for name, value in step.metrics.items():
        module.log(name, value, **LOG_OPTIONS.get(name, STAGE_LOG_OPTIONS))
