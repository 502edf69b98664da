"""Dense relative localization (DRLoc): pair sampling, offset head, loss and λ schedule.

Pure PyTorch, no Lightning: :class:`~vt_drloc.module.DrLocModule` and
:class:`~vt_drloc.callback.DrLocCallback` both call into this file.

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

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DRLOC_MODES = ("l1", "ce", "cbr")
TARGETS = ("abs", "abs_norm", "signed")
SCHEDULES = ("constant", "warmup_decay", "adaptive")
# When λ changes: every optimizer step (fractional epoch) or once per epoch (the released loop).
LAMBDA_INTERVALS = ("step", "epoch")
# "released": every Linear trunc-normal (std 0.02) with zero bias, as the released models' own
# init re-initialises the head; "torch": PyTorch's default Linear init.
HEAD_INITS = ("released", "torch")
# Output of the ce / cbr head. "released": one more Linear(w, w) without activation, then a
# separate Linear(w, n) per axis; "fused": a single Linear(w, 2n) (same function class, fewer weights).
CLASS_HEADS = ("released", "fused")
HEAD_PRESETS: dict[str, tuple[int, ...]] = {"released": (512, 512), "paper": (512,)}
# Weight of the log-variance term of the variance-aware regression ("cbr"), as released.
CBR_LOG_VAR_WEIGHT = 1e-3
_CBR_EPS = 1e-8


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}")


def resolve_hidden_dims(hidden_dims: Sequence[int] | str) -> tuple[int, ...]:
    """Turn a preset name (``"released"``, ``"paper"``) or a sequence of widths into a tuple."""
    if isinstance(hidden_dims, str):
        if hidden_dims not in HEAD_PRESETS:
            raise ValueError(
                f"hidden_dims={hidden_dims!r} is not a preset; use one of {sorted(HEAD_PRESETS)} "
                "or a list of layer widths such as [512, 512]"
            )
        return HEAD_PRESETS[hidden_dims]
    dims = tuple(int(d) for d in hidden_dims)
    if any(d < 1 for d in dims):
        raise ValueError(f"hidden_dims={list(dims)} must hold positive layer widths")
    return dims


def reduced_grid_hw(hw: tuple[int, int], grid_size: int | None) -> tuple[int, int]:
    """(H, W) of the grid the loss sees after :func:`reduce_grid` (same rule, no tensors)."""
    height, width = int(hw[0]), int(hw[1])
    if grid_size is not None:
        while min(height, width) >= 2 * grid_size:
            # AvgPool2d(3, stride 2, padding 1) halves both sides at once
            height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    return height, width


def reduced_grid_size(size: int, grid_size: int | None) -> int:
    """Side of a square grid after :func:`reduce_grid`."""
    return reduced_grid_hw((size, size), grid_size)[0]


def reduce_grid(grid: Tensor, grid_size: int | None = 7) -> Tensor:
    """Average-pool a (B, C, H, W) grid for the DRLoc loss only.

    As in the released code (CvT-13 and T2T-ViT-14 at 224 px), a 14×14 grid becomes 7×7 with
    ``AvgPool2d(3, stride=2, padding=1, count_include_pad=False)``: border cells average only the
    cells that exist, so pooling leaves a constant grid constant and marks no border. In general the
    grid is halved this way while its side is at least ``2 * grid_size``, so 8×8 stays 8×8, 14×14
    becomes 7×7 and 28×28 becomes 7×7 (the released code pooled exactly once; it only ever met
    14×14). ``grid_size=None`` keeps the grid as it is (the released ViT-B/16 kept its 14×14 grid).
    """
    if grid_size is None:
        return grid
    while min(grid.shape[-2:]) >= 2 * grid_size:
        grid = F.avg_pool2d(grid, kernel_size=3, stride=2, padding=1, count_include_pad=False)
    return grid


def sample_cell_pairs(
    batch_size: int,
    height: int,
    width: int,
    sample_size: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw ``sample_size`` pairs of grid cells per image, uniformly and with replacement.

    Returns ``(cells_a, cells_b)``, each a long tensor of shape (B, m, 2) holding (row, col).
    Everything is drawn on ``device`` (use a ``generator`` that lives there for reproducibility),
    so a training step never copies indices from the host.
    """
    if sample_size < 1:
        raise ValueError(f"sample_size={sample_size} must be >= 1")
    if generator is not None:
        device = generator.device
    rows = torch.randint(height, (2, batch_size, sample_size), device=device, generator=generator)
    cols = torch.randint(width, (2, batch_size, sample_size), device=device, generator=generator)
    cells = torch.stack([rows, cols], dim=-1)  # (2, B, m, 2)
    return cells[0], cells[1]


def offset_targets(cells_a: Tensor, cells_b: Tensor, height: int, width: int, target: str = "abs") -> Tensor:
    """Regression targets for the offset between ``cells_a`` and ``cells_b`` (both (..., 2)).

    ``"abs"``: |Δrow|, |Δcol| in grid units (released code, ``--use_abs``);
    ``"abs_norm"``: the same divided by the grid side per axis (paper text);
    ``"signed"``: Δ + (side − 1), i.e. the signed offset shifted into [0, 2·side − 2].
    """
    _check_choice("target", target, TARGETS)
    delta = (cells_a - cells_b).float()
    if target == "abs":
        return delta.abs()
    if target == "abs_norm":
        return _per_axis(delta.abs(), lambda d, side: d / side, height, width)
    return _per_axis(delta, lambda d, side: d + (side - 1), height, width)


def chance_l1(height: int, width: int, target: str = "abs") -> float:
    """The ``l1`` loss of a head that has learned nothing about positions.

    The best constant prediction (each axis's median target) scored over the pair distribution of
    :func:`sample_cell_pairs` (independent uniform cells), averaged over the axes like
    :class:`DrLocLoss`. A training DRLoc loss that stays near it means the localisation task was not
    learned. Exact: every pair of cells is enumerated.

    >>> chance_l1(8, 8)  # |Δ| in grid units on an 8x8 grid
    1.5625
    """
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    cells = torch.stack([rows.flatten(), cols.flatten()], dim=-1)
    n = cells.shape[0]
    targets = offset_targets(cells[:, None].expand(n, n, 2), cells[None, :].expand(n, n, 2), height, width, target)
    targets = targets.reshape(-1, 2).double()
    return (targets - targets.median(dim=0).values).abs().mean().item()


def task_record(loss: DrLocLoss | None, final_loss: float | None) -> dict[str, object]:
    """Did the head learn its task? The grid the loss ran on (after pooling), its :func:`chance_l1`
    and ``final_loss`` (e.g. the last epoch's mean training DRLoc loss) as a fraction of it.

    Chance and fraction are ``None`` for the ``ce`` / ``cbr`` modes (chance is defined for ``l1``)
    and without DRLoc. A fraction near 1 means the head predicted no better than a constant.
    """
    hw = None if loss is None else loss.reduced_hw
    chance = chance_l1(*hw, loss.target) if loss is not None and hw is not None and loss.mode == "l1" else None
    ratio = final_loss / chance if chance and final_loss is not None else None
    return {
        "drloc_grid": None if hw is None else list(hw),
        "drloc_chance_l1": chance,
        "drloc_final_loss": final_loss,
        "drloc_final_over_chance": ratio,
    }


def _per_axis(delta: Tensor, fn, height: int, width: int) -> Tensor:
    # Python scalars per axis: no small tensor is built (and copied to the device) every step.
    return torch.stack([fn(delta[..., 0], height), fn(delta[..., 1], width)], dim=-1)


def offset_classes(cells_a: Tensor, cells_b: Tensor, height: int, width: int, target: str = "abs") -> Tensor:
    """Class index of each offset for ``ce``/``cbr``: |Δ| (abs targets) or Δ + side − 1 (signed)."""
    _check_choice("target", target, TARGETS)
    delta = cells_a - cells_b
    if target == "signed":
        return _per_axis(delta, lambda d, side: d + (side - 1), height, width)
    return delta.abs()


def offset_class_values(size: int, target: str, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Offset value of every class along an axis of side ``size`` (the β of the ``cbr`` loss)."""
    _check_choice("target", target, TARGETS)
    if target == "signed":
        return torch.arange(2 * size - 1, dtype=dtype, device=device)
    values = torch.arange(size, dtype=dtype, device=device)
    return values / size if target == "abs_norm" else values


def num_offset_classes(size: int, target: str) -> int:
    """Number of offset classes along an axis of side ``size``."""
    _check_choice("target", target, TARGETS)
    return 2 * size - 1 if target == "signed" else size


def gather_cells(grid: Tensor, cells: Tensor) -> Tensor:
    """Embeddings at ``cells`` (B, m, 2) of a (B, C, H, W) grid, as (B, m, C)."""
    batch, channels, _, width = grid.shape
    flat = grid.flatten(2).transpose(1, 2)  # (B, HW, C)
    index = (cells[..., 0] * width + cells[..., 1]).unsqueeze(-1).expand(-1, -1, channels)
    return flat.gather(1, index)


class DrLocHead(nn.Module):
    """MLP that predicts the 2-D offset between two cell embeddings from their concatenation.

    Args:
        in_dim: channels C of one cell embedding; the MLP's input is 2C.
        hidden_dims: hidden layer widths (ReLU after each) or a preset name from
            :data:`HEAD_PRESETS`: ``"released"`` = (512, 512), ``"paper"`` = (512,).
        num_classes: ``None`` for regression (output (..., 2)); otherwise the number of offset
            classes per axis (output (..., 2, num_classes)) for the ``ce`` and ``cbr`` modes.
        init: ``"released"`` (default): every Linear truncated-normal with std 0.02 and zero bias,
            as the released models' weight init re-initialises the head; ``"torch"``: PyTorch's
            default Linear init.
        class_head: output layers for ``num_classes`` (see :data:`CLASS_HEADS`): ``"released"``
            adds Linear(w, w) without activation, then one Linear(w, n) per axis (``axis_heads``);
            ``"fused"`` is one Linear(w, 2n).

    >>> head = DrLocHead(64)
    >>> head(torch.randn(8, 64, 128)).shape
    torch.Size([8, 64, 2])
    >>> DrLocHead(64, num_classes=7)(torch.randn(8, 64, 128)).shape
    torch.Size([8, 64, 2, 7])
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int] | str = "released",
        num_classes: int | None = None,
        init: str = "released",
        class_head: str = "released",
    ):
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"in_dim={in_dim} must be >= 1")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2 (or None for regression)")
        _check_choice("init", init, HEAD_INITS)
        _check_choice("class_head", class_head, CLASS_HEADS)
        self.in_dim = in_dim
        self.hidden_dims = resolve_hidden_dims(hidden_dims)
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        width = 2 * in_dim
        for hidden in self.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        per_axis = num_classes is not None and class_head == "released"
        if per_axis:
            layers.append(nn.Linear(width, width))  # no activation after it, as released
        else:
            # one linear layer for both axes (regression: the two offsets; "fused": both classifiers)
            layers.append(nn.Linear(width, 2 * (num_classes or 1)))
        self.mlp = nn.Sequential(*layers)
        self.axis_heads = nn.ModuleList(nn.Linear(width, num_classes) for _ in range(2)) if num_classes is not None and per_axis else None
        if init == "released":
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)

    def forward(self, pairs: Tensor) -> Tensor:
        out = self.mlp(pairs)
        if self.num_classes is None:
            return out
        if self.axis_heads is not None:
            return torch.stack([head(out) for head in self.axis_heads], dim=-2)
        return out.unflatten(-1, (2, self.num_classes))


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
        _check_choice("mode", mode, DRLOC_MODES)
        _check_choice("head_init", head_init, HEAD_INITS)
        _check_choice("class_head", class_head, CLASS_HEADS)
        _check_choice("target", target, TARGETS)
        if int(sample_size) < 1:
            raise ValueError(f"sample_size={sample_size} must be >= 1 (the paper uses 64)")
        if grid_size is not None and int(grid_size) < 2:
            raise ValueError(f"grid_size={grid_size} must be >= 2, or None to never pool the grid")
        self.mode = mode
        self.sample_size = int(sample_size)
        self.target = target
        self.grid_size = None if grid_size is None else int(grid_size)
        self.reduced_hw: tuple[int, int] | None = None
        num_classes = None
        if grid_hw is not None:
            self.reduced_hw = reduced_grid_hw((int(grid_hw[0]), int(grid_hw[1])), self.grid_size)
            if min(self.reduced_hw) < 2:
                raise ValueError(f"grid_hw={tuple(grid_hw)} leaves no offsets to predict; DRLoc needs a grid of at least 2x2")
        if mode != "l1":
            if self.reduced_hw is None:
                raise ValueError(f"mode={mode!r} needs grid_hw=(H, W) to size its offset classes")
            num_classes = num_offset_classes(max(self.reduced_hw), target)
        self.head = DrLocHead(in_dim, hidden_dims, num_classes=num_classes, init=head_init, class_head=class_head)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, sample_size={self.sample_size}, target={self.target!r}, grid_size={self.grid_size}"

    def forward(self, grid: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if grid.dim() != 4:
            raise ValueError(f"DrLocLoss expects a (B, C, H, W) grid, got shape {tuple(grid.shape)}")
        if grid.shape[1] != self.head.in_dim:
            raise ValueError(f"grid has {grid.shape[1]} channels but the head was built for in_dim={self.head.in_dim}")
        grid = reduce_grid(grid, self.grid_size)
        batch, _, height, width = grid.shape
        if self.mode != "l1" and (height, width) != self.reduced_hw:
            raise ValueError(f"grid is {height}x{width} after pooling, but the {self.mode!r} head was sized for {self.reduced_hw}")
        if batch == 0:
            return grid.sum() * 0.0
        cells_a, cells_b = sample_cell_pairs(batch, height, width, self.sample_size, device=grid.device, generator=generator)
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
                total = total + variance_aware_regression(logits, labels, offset_class_values(side, self.target, device=pred.device))
        return total


def variance_aware_regression(logits: Tensor, labels: Tensor, class_values: Tensor, log_var_weight: float = CBR_LOG_VAR_WEIGHT) -> Tensor:
    """Regression through a softmax over offset classes, weighted by the predicted variance.

    μ = Σ p_c β_c and σ² = Σ p_c (β_c − μ)² for p = softmax(logits); the loss is
    mean((μ − β_label)² / σ² + w · log σ²). Confident predictions pay more for their error.
    """
    probs = logits.softmax(dim=-1)
    mean = probs @ class_values
    var = (probs * (class_values - mean.unsqueeze(-1)) ** 2).sum(-1) + _CBR_EPS
    err = (mean - class_values[labels]) ** 2
    return (err / var + log_var_weight * var.log()).mean()


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
    task, decided by :class:`vt_drloc.objective.DrLocObjective`; ``None``: not yet), then a
    linear fall from λ to 0 at the horizon.

    >>> [round(drloc_lambda(0.5, e, 100, "warmup_decay", 20, decay_epochs=300), 4) for e in (0, 1, 20, 50, 100)]
    [0.0, 0.025, 0.5, 0.4464, 0.3571]
    >>> [drloc_lambda(2.0, e, 30, "adaptive", 3, anneal_from=10) for e in (0, 3, 10, 20, 30)]
    [0.0, 2.0, 2.0, 1.0, 0.0]
    """
    _check_choice("schedule", schedule, SCHEDULES)
    if lambda_drloc < 0 or not math.isfinite(lambda_drloc):
        raise ValueError(f"lambda_drloc={lambda_drloc} must be a finite number >= 0")
    if decay_epochs is not None and not (math.isfinite(decay_epochs) and decay_epochs > 0):
        raise ValueError(f"decay_epochs={decay_epochs} must be a number > 0 (the epoch at which λ reaches 0), or None for max_epochs")
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
    _check_choice("interval", interval, LAMBDA_INTERVALS)
    if interval == "epoch":
        return float(epoch)
    fraction = batch_idx / num_batches if isinstance(num_batches, int) and num_batches > 0 else 0.0
    return epoch + fraction


def pair_generator(
    device: torch.device | str,
    seed: int | None = None,
    rank: int = 0,
    state: Tensor | None = None,
) -> torch.Generator:
    """The generator :func:`sample_cell_pairs` draws from, living on ``device``.

    Seeded with ``seed + rank`` (``seed`` defaults to the global ``torch.initial_seed()``), so each
    data-parallel rank samples its own pairs. ``state`` (from ``Generator.get_state()``, saved in a
    checkpoint by rank 0) restores the stream exactly on rank 0; other ranks derive a distinct
    stream from it, so resumed ranks do not sample identical pairs.
    """
    if seed is None:
        seed = torch.initial_seed() % (2**62)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed) + int(rank))
    if state is not None:
        generator.set_state(state)
        if rank:
            derived = torch.randint(2**62, (1,), device=generator.device, generator=generator)
            generator.manual_seed(int(derived) + int(rank))
    return generator
