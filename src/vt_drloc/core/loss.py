"""The DRLoc loss: the head's predicted offsets of sampled cell pairs against their targets.


Pure PyTorch, no Lightning: :class:`~vt_drloc.faces.module.DrLocModule` and
:class:`~vt_drloc.faces.callback.DrLocCallback` both call into ``vt_drloc.core``.

Reference: Y. Liu, E. Sangineto, W. Bi, N. Sebe, B. Lepri, M. De Nadai, "Efficient Training of
Visual Transformers with Small Datasets", NeurIPS 2021 (arXiv:2106.03746).

Where the paper's text and the authors' released code differ, the default follows the released
code (it produced the published numbers) and the paper's variant is an option. The full table,
with the test that pins each row, is ``docs/fidelity.md``; in short:

==================  =================================================  ===========================
option              released code (default)                            paper text
==================  =================================================  ===========================
``target``          ``"abs"``: |Δ| in grid units                       ``"abs_norm"``: |Δ| / k
``hidden_dims``     ``(512, 512)`` (``HEAD_PRESETS["released"]``)       ``(512,)`` (``"paper"``)
``head_init``       ``"released"``: trunc. normal, std 0.02, bias 0     (not stated)
``class_head``      ``"released"``: Linear(512, 512), then per axis    (not stated)
``grid_size``       ``7``: AvgPool2d(3, 2, 1, count_include_pad=False)  k = 7
λ ``schedule``      ``"warmup_decay"``, ``warmup_epochs=20``             ``"constant"``
``decay_epochs``    the run's epochs (released runs: 300 of 100)       (none)
``mode``            ``"l1"``; also ``"ce"`` and ``"cbr"``                ``"l1"``
==================  =================================================  ===========================

``target="signed"`` gives Δ + (k − 1) ∈ [0, 2k − 2] (the released code without ``--use_abs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vt_drloc.core.errors import DrLocConfigError, check_choice
from vt_drloc.core.grid import gather_cells, reduce_grid, reduced_grid_hw
from vt_drloc.core.head import CLASS_HEADS, HEAD_INITS, DrLocHead
from vt_drloc.core.sampling import (
    TARGETS,
    chance_l1,
    num_offset_classes,
    offset_class_values,
    offset_classes,
    offset_targets,
    sample_cell_pairs,
)

DRLOC_MODES = ("l1", "ce", "cbr")


# Weight of the log-variance term of the variance-aware regression ("cbr"), as released.
CBR_LOG_VAR_WEIGHT = 1e-3


_CBR_EPS = 1e-8


def task_record(loss: Any, final_loss: float | None) -> dict[str, object]:
    """Did the head learn its task? The grid the loss ran on (after pooling), its :func:`chance_l1`
    and ``final_loss`` (e.g. the last epoch's mean training DRLoc loss) as a fraction of it.

    Chance and fraction are ``None`` for the ``ce`` / ``cbr`` modes (chance is defined for ``l1``)
    and without DRLoc. A fraction near 1 means the head predicted no better than a constant.
    """
    hws = [] if loss is None else [hw for _, hw in loss.spec]
    chance = None if loss is None else loss.chance_l1()
    ratio = final_loss / chance if chance and final_loss is not None else None
    grids = [None if hw is None else list(hw) for hw in hws]
    return {
        # one stage: its [H, W]; multi-scale (a DrLocLoss per stage, losses summed): a list of them, chance summed
        "drloc_grid": (grids[0] if len(grids) == 1 else grids) if grids else None,
        "drloc_chance_l1": chance,
        "drloc_final_loss": final_loss,
        "drloc_final_over_chance": ratio,
    }


class DrLocLoss(nn.Module):
    """Dense relative localization loss on a grid of token embeddings.

    Samples ``sample_size`` pairs of cells per image, predicts their offset with a
    :class:`DrLocHead` and compares it with the true offset. The returned value is L_drloc
    (unweighted); the caller adds ``λ · L_drloc`` to its task loss.

    Input contract: ``grid`` is (B, C, H, W) with C = ``in_dim``, any float dtype (cast to the
    head's dtype outside autocast); prefix
    (class / distillation / register) tokens must already be removed. Grids whose side is at least
    ``2 * grid_size`` are average-pooled first (:func:`reduce_grid`). For ``ce``/``cbr`` the grid
    side after pooling must equal the one given at construction (``grid_hw``), since it fixes the
    number of offset classes.

    Args:
        in_dim: channels of the grid.
        mode: ``"l1"`` (regression, default), ``"ce"`` (per-axis classification over the offsets,
            summed over the two axes) or ``"cbr"`` (variance-aware regression over the offset
            classes: softmax expectation μ and variance σ² per axis,
            mean((μ − t)² / σ² + 1e-3 · log σ²), summed over the two axes).
        sample_size: m, pairs per image (paper: 64).
        target: ``"abs"`` (default), ``"abs_norm"`` or ``"signed"``; see :func:`offset_targets`.
        hidden_dims: head widths or preset; see :class:`DrLocHead`.
        grid_size: pooling target k (default 7; ``None`` = never pool); see :func:`reduce_grid`.
        grid_hw: (H, W) of the backbone grid before pooling; required for ``ce`` and ``cbr``.
        head_init, class_head: see :class:`DrLocHead` (``init`` / ``class_head``).

    Reference: Liu et al., "Efficient Training of Visual Transformers with Small Datasets",
    NeurIPS 2021.

    >>> loss_fn = DrLocLoss(in_dim=32, sample_size=16)
    >>> grid = torch.randn(4, 32, 8, 8)
    >>> loss = loss_fn(grid, generator=torch.Generator().manual_seed(0))
    >>> loss.shape, bool(loss > 0)
    (torch.Size([]), True)
    """

    def __init__(
        self,
        in_dim: int,
        mode: str = "l1",
        sample_size: int = 64,
        target: str = "abs",
        hidden_dims: Sequence[int] | str = "released",
        grid_size: int | None = 7,
        grid_hw: tuple[int, int] | None = None,
        head_init: str = "released",
        class_head: str = "released",
    ):
        super().__init__()
        check_choice("mode", mode, DRLOC_MODES)
        check_choice("head_init", head_init, HEAD_INITS)
        check_choice("class_head", class_head, CLASS_HEADS)
        check_choice("target", target, TARGETS)
        if int(sample_size) < 1:
            raise DrLocConfigError(f"sample_size={sample_size} must be >= 1 (the paper uses 64)")
        if grid_size is not None and int(grid_size) < 2:
            raise DrLocConfigError(f"grid_size={grid_size} must be >= 2, or None to never pool the grid")
        self.mode = mode
        self.sample_size = int(sample_size)
        self.target = target
        self.grid_size = None if grid_size is None else int(grid_size)
        self.reduced_hw: tuple[int, int] | None = None
        num_classes = None
        if grid_hw is not None:
            self.reduced_hw = reduced_grid_hw((int(grid_hw[0]), int(grid_hw[1])), self.grid_size)
            if min(self.reduced_hw) < 2:
                raise DrLocConfigError(
                    f"grid_hw={tuple(grid_hw)} leaves no offsets to predict; DRLoc needs a grid of at least 2x2"
                )
        if mode != "l1":
            if self.reduced_hw is None:
                raise DrLocConfigError(f"mode={mode!r} needs grid_hw=(H, W) to size its offset classes")
            num_classes = num_offset_classes(max(self.reduced_hw), target)
        self.head = DrLocHead(in_dim, hidden_dims, num_classes=num_classes, init=head_init, class_head=class_head)

    @property
    def spec(self) -> tuple[tuple[int, tuple[int, int] | None], ...]:
        """``((channels, pooled (H, W)),)``: what the loss was built for (one entry per grid it reads)."""
        return ((self.head.in_dim, self.reduced_hw),)

    def chance_l1(self) -> float | None:
        """:func:`chance_l1` of the pooled grid (the L1 of the best constant prediction), or None outside
        ``mode="l1"`` or before the grid size is known."""
        return chance_l1(*self.reduced_hw, self.target) if self.reduced_hw is not None and self.mode == "l1" else None

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, sample_size={self.sample_size}, target={self.target!r}, grid_size={self.grid_size}"

    def forward(self, grid: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if grid.dim() != 4:
            raise DrLocConfigError(f"DrLocLoss expects a (B, C, H, W) grid, got shape {tuple(grid.shape)}")
        if grid.shape[1] != self.head.in_dim:
            raise DrLocConfigError(
                f"grid has {grid.shape[1]} channels but the head was built for in_dim={self.head.in_dim}"
            )
        grid = reduce_grid(grid, self.grid_size)
        batch, _, height, width = grid.shape
        if self.mode != "l1" and (height, width) != self.reduced_hw:
            raise DrLocConfigError(
                f"grid is {height}x{width} after pooling, but the {self.mode!r} head was sized for {self.reduced_hw}"
            )
        if batch == 0:
            return grid.sum() * 0.0
        cells_a, cells_b = sample_cell_pairs(
            batch, height, width, self.sample_size, device=grid.device, generator=generator
        )
        pairs = torch.cat([gather_cells(grid, cells_a), gather_cells(grid, cells_b)], dim=-1)
        if not torch.is_autocast_enabled(pairs.device.type):
            # a half / double grid outside autocast meets the head in the head's own dtype
            pairs = pairs.to(next(self.head.parameters()).dtype)
        pred = self.head(pairs)
        return self.loss_from_prediction(pred, cells_a, cells_b, height, width)

    def loss_from_prediction(self, pred: Tensor, cells_a: Tensor, cells_b: Tensor, height: int, width: int) -> Tensor:
        """The loss for head outputs ``pred`` on the pairs ``cells_a``/``cells_b`` (all (B, m, ...))."""
        pred = pred.float()  # the loss is computed in fp32 under autocast
        if self.mode == "l1":
            return F.l1_loss(pred, offset_targets(cells_a, cells_b, height, width, self.target))
        classes = offset_classes(cells_a, cells_b, height, width, self.target)
        total = pred.new_zeros(())
        for axis, side in enumerate((height, width)):
            n = num_offset_classes(side, self.target)
            logits = pred[..., axis, :n].reshape(-1, n)
            labels = classes[..., axis].reshape(-1)
            if self.mode == "ce":
                total = total + F.cross_entropy(logits, labels)
            else:
                total = total + variance_aware_regression(
                    logits, labels, offset_class_values(side, self.target, device=pred.device)
                )
        return total


def variance_aware_regression(
    logits: Tensor, labels: Tensor, class_values: Tensor, log_var_weight: float = CBR_LOG_VAR_WEIGHT
) -> Tensor:
    """Regression through a softmax over offset classes, weighted by the predicted variance.

    μ = Σ p_c β_c and σ² = Σ p_c (β_c − μ)² for p = softmax(logits); the loss is
    mean((μ − β_label)² / σ² + w · log σ²). Confident predictions pay more for their error.
    """
    probs = logits.softmax(dim=-1)
    mean = probs @ class_values
    var = (probs * (class_values - mean.unsqueeze(-1)) ** 2).sum(-1) + _CBR_EPS
    err = (mean - class_values[labels]) ** 2
    return (err / var + log_var_weight * var.log()).mean()
