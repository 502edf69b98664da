"""The DRLoc core on hand-built grids: sampling, targets, pooling, losses and the λ schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vt_drloc.core import (
    DrLocHead,
    DrLocLoss,
    chance_l1,
    drloc_lambda,
    gather_cells,
    offset_classes,
    offset_targets,
    reduce_grid,
    reduced_grid_size,
    sample_cell_pairs,
    variance_aware_regression,
)


def coordinate_grid(batch: int, height: int, width: int) -> torch.Tensor:
    """A (B, 3, H, W) grid whose cell (r, c) of image b holds (r, c, b)."""
    rows = torch.arange(height).view(1, height, 1).expand(batch, height, width)
    cols = torch.arange(width).view(1, 1, width).expand(batch, height, width)
    imgs = torch.arange(batch).view(batch, 1, 1).expand(batch, height, width)
    return torch.stack([rows, cols, imgs], dim=1).float()


def test_gather_cells_reads_the_sampled_coordinates():
    grid = coordinate_grid(3, 5, 5)
    gen = torch.Generator().manual_seed(0)
    cells_a, cells_b = sample_cell_pairs(3, 5, 5, 40, generator=gen)
    emb_a = gather_cells(grid, cells_a)
    assert emb_a.shape == (3, 40, 3)
    assert torch.equal(emb_a[..., :2].long(), cells_a)
    assert torch.equal(emb_a[..., 2].long(), torch.arange(3).view(3, 1).expand(3, 40))
    assert torch.equal(gather_cells(grid, cells_b)[..., :2].long(), cells_b)


def test_known_pairs_give_known_targets_for_every_option():
    a = torch.tensor([[[0, 0], [6, 2], [3, 3]]])
    b = torch.tensor([[[3, 1], [0, 6], [3, 3]]])
    # abs: |a - b| in grid units
    assert offset_targets(a, b, 7, 7, "abs").tolist() == [[[3.0, 1.0], [6.0, 4.0], [0.0, 0.0]]]
    # abs_norm: divided by the side k = 7 (paper text)
    expected = torch.tensor([[[3 / 7, 1 / 7], [6 / 7, 4 / 7], [0.0, 0.0]]])
    assert torch.allclose(offset_targets(a, b, 7, 7, "abs_norm"), expected)
    # signed: (a - b) + (k - 1)
    assert offset_targets(a, b, 7, 7, "signed").tolist() == [[[3.0, 5.0], [12.0, 2.0], [6.0, 6.0]]]
    assert offset_classes(a, b, 7, 7, "abs").tolist() == [[[3, 1], [6, 4], [0, 0]]]
    assert offset_classes(a, b, 7, 7, "signed").tolist() == [[[3, 5], [12, 2], [6, 6]]]


def test_targets_on_a_non_square_grid_use_each_axis_side():
    a = torch.tensor([[[1, 7]]])
    b = torch.tensor([[[3, 0]]])
    assert torch.allclose(offset_targets(a, b, 4, 8, "abs_norm"), torch.tensor([[[2 / 4, 7 / 8]]]))
    assert offset_targets(a, b, 4, 8, "signed").tolist() == [[[1.0, 14.0]]]


def test_sampling_is_uniform_in_range_and_reproducible():
    g1 = torch.Generator().manual_seed(7)
    g2 = torch.Generator().manual_seed(7)
    a1, b1 = sample_cell_pairs(4, 6, 6, 64, generator=g1)
    a2, b2 = sample_cell_pairs(4, 6, 6, 64, generator=g2)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    a3, _ = sample_cell_pairs(4, 6, 6, 64, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a1, a3)
    assert a1.shape == (4, 64, 2) and a1.dtype == torch.long
    big_a, _ = sample_cell_pairs(64, 6, 6, 64, generator=g1)
    counts = torch.bincount((big_a[..., 0] * 6 + big_a[..., 1]).flatten(), minlength=36)
    assert counts.min() > 0 and int(big_a.min()) == 0 and int(big_a.max()) == 5
    # every cell ~ 4096/36 = 114 draws; a wildly skewed sampler fails this
    assert counts.max() < 2 * counts.float().mean()


def test_reduce_grid_halves_while_the_side_is_at_least_twice_grid_size():
    # the pooled values are pinned in tests/test_fidelity.py; here the sizes of the generic rule
    assert reduce_grid(torch.randn(2, 5, 14, 14), 7).shape[-2:] == (7, 7)
    assert reduce_grid(torch.randn(1, 2, 8, 8), 7).shape[-2:] == (8, 8)
    assert reduce_grid(torch.randn(1, 2, 28, 28), 7).shape[-2:] == (7, 7)
    grid = torch.randn(1, 2, 14, 14)
    assert reduce_grid(grid, None) is grid
    assert [reduced_grid_size(s, 7) for s in (4, 8, 13, 14, 28, 56)] == [4, 8, 13, 7, 7, 7]


def test_l1_loss_value_worked_by_hand():
    loss_fn = DrLocLoss(in_dim=3, mode="l1", grid_size=None)
    a = torch.tensor([[[0, 0], [2, 1]]])
    b = torch.tensor([[[1, 3], [2, 1]]])
    pred = torch.tensor([[[0.5, 1.0], [1.0, 0.0]]])
    # targets |Δ| = [[1, 3], [0, 0]]; |pred - t| = [0.5, 2, 1, 0] -> mean 0.875
    assert loss_fn.loss_from_prediction(pred, a, b, 4, 4).item() == pytest.approx(0.875)
    loss_norm = DrLocLoss(in_dim=3, mode="l1", target="abs_norm", grid_size=None)
    # targets [[0.25, 0.75], [0, 0]]; |pred - t| = [0.25, 0.25, 1, 0] -> 0.375
    assert loss_norm.loss_from_prediction(pred, a, b, 4, 4).item() == pytest.approx(0.375)


def test_ce_loss_value_worked_by_hand():
    loss_fn = DrLocLoss(in_dim=3, mode="ce", grid_size=None, grid_hw=(4, 4))
    assert loss_fn.head.num_classes == 4
    a = torch.tensor([[[0, 0]]])
    b = torch.tensor([[[2, 0]]])  # classes: row 2, col 0
    pred = torch.zeros(1, 1, 2, 4)
    # uniform logits: log(4) per axis
    assert loss_fn.loss_from_prediction(pred, a, b, 4, 4).item() == pytest.approx(2 * math.log(4))
    pred[0, 0, 0, 2] = 2.0  # row axis favours the right class
    expected = -math.log(math.exp(2) / (math.exp(2) + 3)) + math.log(4)
    assert loss_fn.loss_from_prediction(pred, a, b, 4, 4).item() == pytest.approx(expected, rel=1e-5)
    signed = DrLocLoss(in_dim=3, mode="ce", target="signed", grid_size=None, grid_hw=(4, 4))
    assert signed.head.num_classes == 7


def test_cbr_loss_value_worked_by_hand():
    loss_fn = DrLocLoss(in_dim=3, mode="cbr", grid_size=None, grid_hw=(3, 3))
    a = torch.tensor([[[2, 0]]])
    b = torch.tensor([[[0, 1]]])  # classes: row 2, col 1
    pred = torch.zeros(1, 1, 2, 3)
    # uniform p over β = (0, 1, 2): μ = 1, σ² = 2/3.
    # row: (1 - 2)² / (2/3) = 1.5 ; col: (1 - 1)² / (2/3) = 0 ; each + 1e-3 · log(2/3)
    expected = 1.5 + 2 * 1e-3 * math.log(2 / 3)
    assert loss_fn.loss_from_prediction(pred, a, b, 3, 3).item() == pytest.approx(expected, rel=1e-5)
    direct = variance_aware_regression(torch.zeros(1, 3), torch.tensor([2]), torch.arange(3.0))
    assert direct.item() == pytest.approx(1.5 + 1e-3 * math.log(2 / 3), rel=1e-5)


def test_loss_runs_on_a_grid_and_backpropagates_to_it():
    torch.manual_seed(0)
    for mode in ("l1", "ce", "cbr"):
        loss_fn = DrLocLoss(in_dim=8, mode=mode, sample_size=16, grid_hw=(14, 14))
        grid = torch.randn(3, 8, 14, 14, requires_grad=True)
        loss = loss_fn(grid, generator=torch.Generator().manual_seed(1))
        assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
        loss.backward()
        assert grid.grad is not None and grid.grad.abs().sum() > 0
        assert all(p.grad is not None for p in loss_fn.head.parameters())


def test_same_generator_seed_gives_the_same_loss():
    loss_fn = DrLocLoss(in_dim=4, sample_size=8)
    grid = torch.randn(2, 4, 7, 7)
    first = loss_fn(grid, generator=torch.Generator().manual_seed(3))
    second = loss_fn(grid, generator=torch.Generator().manual_seed(3))
    third = loss_fn(grid, generator=torch.Generator().manual_seed(4))
    assert first.item() == second.item() != third.item()


def test_head_presets_and_shapes():
    released = DrLocHead(16)
    assert [m.out_features for m in released.mlp if isinstance(m, torch.nn.Linear)] == [512, 512, 2]
    paper = DrLocHead(16, "paper")
    assert [m.out_features for m in paper.mlp if isinstance(m, torch.nn.Linear)] == [512, 2]
    assert DrLocHead(16, [32], num_classes=5)(torch.randn(2, 3, 32)).shape == (2, 3, 2, 5)
    assert paper.mlp[0].in_features == 32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="l2"), "mode='l2'"),
        (dict(target="rel"), "target='rel'"),
        (dict(sample_size=0), "sample_size=0"),
        (dict(grid_size=1), "grid_size=1"),
        (dict(mode="ce"), "grid_hw"),
        (dict(hidden_dims="huge"), "hidden_dims='huge'"),
        (dict(hidden_dims=[0]), "hidden_dims"),
        (dict(grid_hw=(1, 1)), "at least 2x2"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        DrLocLoss(in_dim=4, **kwargs)


def test_bad_grids_are_rejected():
    loss_fn = DrLocLoss(in_dim=4, mode="ce", grid_hw=(7, 7))
    with pytest.raises(ValueError, match="channels"):
        loss_fn(torch.randn(1, 5, 7, 7))
    with pytest.raises(ValueError, match="sized for"):
        loss_fn(torch.randn(1, 4, 6, 6))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        loss_fn(torch.randn(4, 49))


def test_empty_batch_gives_zero_loss():
    loss_fn = DrLocLoss(in_dim=4)
    assert loss_fn(torch.randn(0, 4, 7, 7)).item() == 0.0


def test_lambda_schedules():
    assert drloc_lambda(0.5, 3.0, 100, "constant") == 0.5
    lam = [drloc_lambda(0.5, e, 100, "warmup_decay", 20) for e in (0, 10, 20, 60, 100, 120)]
    assert lam == pytest.approx([0.0, 0.25, 0.5, 0.25, 0.0, 0.0])
    assert drloc_lambda(0.5, 50, None, "warmup_decay", 20) == 0.5
    assert drloc_lambda(0.5, 5, 10, "warmup_decay", 0) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="schedule='cosine'"):
        drloc_lambda(0.5, 0, 10, "cosine")
    with pytest.raises(ValueError, match="lambda_drloc=-1"):
        drloc_lambda(-1, 0, 10)


def test_loss_matches_manual_l1_on_the_sampled_pairs():
    loss_fn = DrLocLoss(in_dim=3, sample_size=10, grid_size=None)
    grid = coordinate_grid(2, 6, 6)
    loss = loss_fn(grid, generator=torch.Generator().manual_seed(5))
    a, b = sample_cell_pairs(2, 6, 6, 10, generator=torch.Generator().manual_seed(5))
    pairs = torch.cat([gather_cells(grid, a), gather_cells(grid, b)], -1)
    manual = F.l1_loss(loss_fn.head(pairs), (a - b).abs().float())
    assert loss.item() == pytest.approx(manual.item())


def test_chance_l1_is_the_loss_of_the_best_constant_prediction():
    # 2x2 grid: per axis |Δ| is 0 or 1 with probability 1/2 each -> median 0, loss 1/2
    assert chance_l1(2, 2) == 0.5
    # abs_norm divides by the side; non-square grids average the two axes
    assert chance_l1(8, 8, "abs_norm") == pytest.approx(chance_l1(8, 8) / 8)
    assert chance_l1(4, 8) == pytest.approx((chance_l1(4, 4) + chance_l1(8, 8)) / 2)
    # sampled pairs: a constant head at the median scores chance_l1, any other constant scores worse
    gen = torch.Generator().manual_seed(0)
    cells_a, cells_b = sample_cell_pairs(400, 8, 8, 500, generator=gen)
    targets = offset_targets(cells_a, cells_b, 8, 8)
    at_median = F.l1_loss(torch.full_like(targets, 2.0), targets).item()
    assert at_median == pytest.approx(chance_l1(8, 8), abs=0.01)
    for other in (1.0, 2.5, 3.0, targets.mean().item()):
        assert F.l1_loss(torch.full_like(targets, other), targets).item() > at_median


def test_task_record_names_the_grid_its_chance_and_the_fraction():
    from vt_drloc.core import task_record

    # 14x14 pooled to 7x7. Per axis |d| = 0..6 with counts 7, 12, 10, 8, 6, 4, 2 (of 49); median 2;
    # E|d - 2| = (7*2 + 12*1 + 0 + 8*1 + 6*2 + 4*3 + 2*4) / 49 = 66/49
    record = task_record(DrLocLoss(in_dim=4, grid_hw=(14, 14)), 1.0)
    assert record["drloc_grid"] == [7, 7] and record["drloc_chance_l1"] == pytest.approx(66 / 49)
    assert record["drloc_final_over_chance"] == pytest.approx(49 / 66)
    assert task_record(DrLocLoss(in_dim=4, mode="ce", grid_hw=(8, 8)), 2.0)["drloc_chance_l1"] is None
    assert task_record(None, None) == {
        "drloc_grid": None,
        "drloc_chance_l1": None,
        "drloc_final_loss": None,
        "drloc_final_over_chance": None,
    }
