"""The DRLoc core in pure PyTorch: no Lightning is imported here or below.

Liu et al., "Efficient Training of Visual Transformers with Small Datasets", NeurIPS 2021.

* ``sampling``: which cell pairs DRLoc compares and their offset targets;
* ``head``: the MLP that predicts a pair's offset; ``loss``: ``DrLocLoss`` (owns the head);
* ``grid``: pooling the final grid; ``schedule``: λ over training; ``stages``: multi-scale DRLoc
  (a loss per stage of a hierarchical backbone, summed);
* ``tap``: the final grid of a timm model from the forward that gives the logits; ``discover``: the
  final grid of any model by what runs (the callback's route); ``errors``: ``DrLocConfigError``.

Everything the faces (``DrLocModule``, ``DrLocCallback``) need is importable from here.
"""

from vt_drloc.core.discover import GridReading, GridSource
from vt_drloc.core.errors import DrLocConfigError, check_choice
from vt_drloc.core.grid import gather_cells, reduce_grid, reduced_grid_hw, reduced_grid_size
from vt_drloc.core.head import CLASS_HEADS, HEAD_INITS, HEAD_PRESETS, DrLocHead, resolve_hidden_dims
from vt_drloc.core.loss import CBR_LOG_VAR_WEIGHT, DRLOC_MODES, DrLocLoss, task_record, variance_aware_regression
from vt_drloc.core.sampling import (
    TARGETS,
    chance_l1,
    num_offset_classes,
    offset_class_values,
    offset_classes,
    offset_targets,
    pair_generator,
    sample_cell_pairs,
)
from vt_drloc.core.schedule import LAMBDA_INTERVALS, SCHEDULES, drloc_lambda, epoch_progress
from vt_drloc.core.stages import STAGE_CHOICES, MultiScaleDrLocLoss
from vt_drloc.core.tap import GridInfo, GridTapError, probe_grid, tap_grid

__all__ = [
    "CBR_LOG_VAR_WEIGHT",
    "CLASS_HEADS",
    "DRLOC_MODES",
    "HEAD_INITS",
    "HEAD_PRESETS",
    "LAMBDA_INTERVALS",
    "SCHEDULES",
    "STAGE_CHOICES",
    "TARGETS",
    "DrLocConfigError",
    "DrLocHead",
    "DrLocLoss",
    "GridInfo",
    "GridReading",
    "GridSource",
    "GridTapError",
    "MultiScaleDrLocLoss",
    "chance_l1",
    "check_choice",
    "drloc_lambda",
    "epoch_progress",
    "gather_cells",
    "num_offset_classes",
    "offset_class_values",
    "offset_classes",
    "offset_targets",
    "pair_generator",
    "probe_grid",
    "reduce_grid",
    "reduced_grid_hw",
    "reduced_grid_size",
    "resolve_hidden_dims",
    "sample_cell_pairs",
    "tap_grid",
    "task_record",
    "variance_aware_regression",
]
