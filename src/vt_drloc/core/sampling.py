"""Pair sampling and offset targets: which cells DRLoc compares, and what the head must predict.

Targets follow the released code (``abs``: |Δ| in grid units) or the paper's text (``abs_norm``:
|Δ| / k); ``signed`` is Δ + (k − 1), the released code without ``--use_abs``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vt_drloc.core.errors import DrLocConfigError, check_choice

TARGETS = ("abs", "abs_norm", "signed")


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
        raise DrLocConfigError(f"sample_size={sample_size} must be >= 1")
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
    check_choice("target", target, TARGETS)
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


def _per_axis(delta: Tensor, fn, height: int, width: int) -> Tensor:
    # Python scalars per axis: no small tensor is built (and copied to the device) every step.
    return torch.stack([fn(delta[..., 0], height), fn(delta[..., 1], width)], dim=-1)


def offset_classes(cells_a: Tensor, cells_b: Tensor, height: int, width: int, target: str = "abs") -> Tensor:
    """Class index of each offset for ``ce``/``cbr``: |Δ| (abs targets) or Δ + side − 1 (signed)."""
    check_choice("target", target, TARGETS)
    delta = cells_a - cells_b
    if target == "signed":
        return _per_axis(delta, lambda d, side: d + (side - 1), height, width)
    return delta.abs()


def offset_class_values(size: int, target: str, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Offset value of every class along an axis of side ``size`` (the β of the ``cbr`` loss)."""
    check_choice("target", target, TARGETS)
    if target == "signed":
        return torch.arange(2 * size - 1, dtype=dtype, device=device)
    values = torch.arange(size, dtype=dtype, device=device)
    return values / size if target == "abs_norm" else values


def num_offset_classes(size: int, target: str) -> int:
    """Number of offset classes along an axis of side ``size``."""
    check_choice("target", target, TARGETS)
    return 2 * size - 1 if target == "signed" else size


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
