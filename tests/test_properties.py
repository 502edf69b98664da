"""Property-based tests (hypothesis) of the DRLoc core: vt_drloc.core (issue 9, item 6).

Grids of 1..16 cells per side, square and not, batches of 0..3, sample sizes 0..40, float16 /
bfloat16 / float64 grids, NaN and inf values. Small example counts: the suite runs on 2 shared cores.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vt_drloc.core import (
    TARGETS,
    DrLocLoss,
    offset_targets,
    reduce_grid,
    reduced_grid_hw,
    reduced_grid_size,
    sample_cell_pairs,
)

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sides = st.integers(1, 16)
batches = st.integers(0, 3)
sample_sizes = st.integers(1, 40)
seeds = st.integers(0, 2**31 - 1)
CHANNELS = 6


def loss_fn(mode="l1", sample_size=8, grid_size=7, grid_hw=None, target="abs"):
    torch.manual_seed(0)
    return DrLocLoss(
        CHANNELS,
        mode=mode,
        sample_size=sample_size,
        target=target,
        hidden_dims=[8],
        grid_size=grid_size,
        grid_hw=grid_hw,
    )


# ----------------------------------------------------------------------------------- sampling
@FAST
@given(batch=batches, height=sides, width=sides, m=sample_sizes, seed=seeds)
def test_sampled_cells_lie_on_the_grid_and_repeat_with_the_seed(batch, height, width, m, seed):
    a, b = sample_cell_pairs(batch, height, width, m, generator=torch.Generator().manual_seed(seed))
    assert a.shape == b.shape == (batch, m, 2) and a.dtype == torch.long
    for cells in (a, b):
        assert bool((cells[..., 0] >= 0).all() and (cells[..., 0] < height).all())
        assert bool((cells[..., 1] >= 0).all() and (cells[..., 1] < width).all())
    a2, b2 = sample_cell_pairs(batch, height, width, m, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, a2) and torch.equal(b, b2)


@FAST
@given(m=st.integers(-5, 0))
def test_sample_size_below_one_is_refused(m):
    with pytest.raises(ValueError, match="sample_size"):
        sample_cell_pairs(2, 4, 4, m)
    with pytest.raises(ValueError, match="sample_size"):
        DrLocLoss(CHANNELS, sample_size=m)


# ----------------------------------------------------------------------------------- targets
@FAST
@given(height=sides, width=sides, m=sample_sizes, seed=seeds, target=st.sampled_from(TARGETS))
def test_offset_targets_bounds_and_symmetry(height, width, m, seed, target):
    a, b = sample_cell_pairs(2, height, width, m, generator=torch.Generator().manual_seed(seed))
    t = offset_targets(a, b, height, width, target)
    assert t.shape == (2, m, 2) and t.dtype == torch.float32 and bool(torch.isfinite(t).all())
    sides_ = torch.tensor([height, width], dtype=torch.float32)
    if target == "abs":
        assert bool((t >= 0).all() and (t <= sides_ - 1).all())
        assert torch.equal(t, offset_targets(b, a, height, width, target))
    elif target == "abs_norm":
        assert bool((t >= 0).all() and (t < 1).all())
    else:  # signed, shifted into [0, 2 side - 2]; a == b sits in the middle
        assert bool((t >= 0).all() and (t <= 2 * sides_ - 2).all())
        assert torch.equal(offset_targets(a, a, height, width, target)[0, 0], sides_ - 1)
    assert not offset_targets(a, a, height, width, "abs").any()


# ----------------------------------------------------------------------------------- pooling
@FAST
@given(side=sides, k=st.integers(2, 8))
def test_reduce_grid_matches_reduced_grid_size_on_square_grids(side, k):
    out = reduce_grid(torch.randn(1, 2, side, side), k)
    assert out.shape[-2:] == (reduced_grid_size(side, k),) * 2
    assert reduce_grid(torch.randn(1, 2, side, side), None).shape[-1] == side


@FAST
@given(height=sides, width=sides, k=st.integers(2, 8), mode=st.sampled_from(["ce", "cbr"]))
@pytest.mark.fault(
    "DRLoc core: a non-square grid with `ce` / `cbr`",
    "found by the property tests, then fixed: the head is sized by the same joint rule `reduce_grid` pools by",
    kind="defect",
)
def test_reduce_grid_matches_reduced_grid_hw_on_non_square_grids(height, width, k, mode):
    # AvgPool2d halves both sides at once, so the head is sized for the grid the loss really sees
    out = reduce_grid(torch.randn(1, 2, height, width), k)
    assert tuple(out.shape[-2:]) == reduced_grid_hw((height, width), k)
    if min(reduced_grid_hw((height, width), k)) >= 2:
        fn = loss_fn(mode=mode, grid_size=k, grid_hw=(height, width))
        assert math.isfinite(
            fn(torch.randn(2, CHANNELS, height, width), generator=torch.Generator().manual_seed(0)).item()
        )


# ----------------------------------------------------------------------------------- the loss
@FAST
@given(
    batch=batches,
    height=sides,
    width=sides,
    m=sample_sizes,
    seed=seeds,
    grid_size=st.one_of(st.none(), st.integers(2, 8)),
)
@pytest.mark.fault(
    "DRLoc core, hypothesis: grids 1…16 per side (square and not), batch 0…3, pair counts 1…40 and ≤ 0, all targets "
    "and modes, float16/bfloat16 under autocast, NaN/±inf grids, wrong shapes",
    "the properties of `test_properties.py` hold over ~250 generated inputs: cells on the grid and reproducible, "
    "target bounds and symmetry, finite non-negative L1 loss with finite gradients, 0 for an empty batch; < 2x2 grids "
    "and wrong shapes refused; non-finite grids give a non-finite loss, never a silent number",
    kind="bad input",
)
def test_l1_loss_is_a_finite_non_negative_scalar_for_any_grid(batch, height, width, m, seed, grid_size):
    fn = loss_fn(sample_size=m, grid_size=grid_size)
    grid = torch.randn(batch, CHANNELS, height, width, requires_grad=True)
    loss = fn(grid, generator=torch.Generator().manual_seed(seed))
    assert loss.shape == () and math.isfinite(loss.item()) and loss.item() >= 0
    loss.backward()  # an empty batch gives 0 and still back-propagates
    assert grid.grad is not None and bool(torch.isfinite(grid.grad).all())
    if batch == 0:
        assert loss.item() == 0.0
    again = fn(grid.detach(), generator=torch.Generator().manual_seed(seed))
    assert again.item() == loss.item()


@FAST
@given(
    side=st.integers(2, 16),
    m=sample_sizes,
    seed=seeds,
    mode=st.sampled_from(["ce", "cbr"]),
    target=st.sampled_from(TARGETS),
)
def test_classification_modes_are_finite_on_square_grids(side, m, seed, mode, target):
    fn = loss_fn(mode=mode, sample_size=m, grid_hw=(side, side), target=target)
    loss = fn(torch.randn(2, CHANNELS, side, side), generator=torch.Generator().manual_seed(seed))
    assert loss.shape == () and math.isfinite(loss.item())


@FAST
@given(height=sides, width=sides)
def test_classification_modes_need_a_grid_of_two_cells_per_side(height, width):
    if min(reduced_grid_size(height, 7), reduced_grid_size(width, 7)) >= 2:
        return
    with pytest.raises(ValueError, match="at least 2x2"):
        loss_fn(mode="ce", grid_hw=(height, width))


@FAST
@given(
    batch=st.integers(1, 3),
    height=sides,
    width=sides,
    seed=seeds,
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
)
def test_half_precision_grids_under_autocast_give_a_finite_fp32_loss(batch, height, width, seed, dtype):
    fn = loss_fn()
    grid = torch.randn(batch, CHANNELS, height, width).to(dtype)
    with torch.autocast("cpu", dtype=dtype):  # as under precision=16-mixed / bf16-mixed
        loss = fn(grid, generator=torch.Generator().manual_seed(seed))
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.fault(
    "DRLoc core: a {dtype} grid outside autocast",
    "found by the property tests, then fixed: the sampled pairs are cast to the head's dtype; the loss equals the fp32 "
    "one",
    kind="defect",
)
def test_non_float32_grid_without_autocast(dtype):
    fn = loss_fn()
    grid = torch.randn(2, CHANNELS, 4, 4)
    low = fn(grid.to(dtype), generator=torch.Generator().manual_seed(0))
    ref = fn(grid.to(dtype).float(), generator=torch.Generator().manual_seed(0))
    assert low.dtype == torch.float32 and low.item() == pytest.approx(ref.item(), rel=1e-6)


@FAST
@given(
    batch=st.integers(1, 3),
    height=sides,
    width=sides,
    m=sample_sizes,
    seed=seeds,
    bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
)
def test_non_finite_grid_gives_a_non_finite_loss_never_a_silent_number(batch, height, width, m, seed, bad):
    fn = loss_fn(sample_size=m, grid_size=None)
    grid = torch.full((batch, CHANNELS, height, width), bad)
    loss = fn(grid, generator=torch.Generator().manual_seed(seed))
    assert not math.isfinite(loss.item())  # NonFiniteLossGuard then stops the run (test_reliability)


@FAST
@given(shape=st.sampled_from([(2, CHANNELS, 4), (CHANNELS, 4, 4), (2, CHANNELS + 1, 4, 4), (1, 2, CHANNELS, 4, 4)]))
def test_wrong_grid_shapes_are_refused_with_a_message(shape):
    with pytest.raises(ValueError, match="grid|channels"):
        loss_fn()(torch.randn(*shape))
