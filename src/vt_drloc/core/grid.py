"""The DRLoc grid: pooling a large final grid to about ``grid_size`` cells, reading cells by index."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


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


def gather_cells(grid: Tensor, cells: Tensor) -> Tensor:
    """Embeddings at ``cells`` (B, m, 2) of a (B, C, H, W) grid, as (B, m, C)."""
    batch, channels, _, width = grid.shape
    flat = grid.flatten(2).transpose(1, 2)  # (B, HW, C)
    index = (cells[..., 0] * width + cells[..., 1]).unsqueeze(-1).expand(-1, -1, channels)
    return flat.gather(1, index)
