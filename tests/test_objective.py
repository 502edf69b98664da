"""DrLocObjective: the λ policies (including the adaptive one) and the state it checkpoints."""

from __future__ import annotations

import pytest
import torch

from vt_drloc import DrLocModule
from vt_drloc.core import chance_l1, drloc_lambda
from vt_drloc.faces.objective import DrLocConfig, DrLocObjective


def adaptive(threshold: float = 0.3, warmup: float = 2) -> DrLocObjective:
    objective = DrLocObjective(
        DrLocConfig(lambda_drloc=2.0, schedule="adaptive", lambda_warmup_epochs=warmup, task_threshold=threshold)
    )
    objective.build_loss(channels=8, grid_hw=(8, 8))
    return objective


def test_adaptive_lambda_holds_until_the_head_learns_then_anneals():
    objective = adaptive()
    chance = chance_l1(8, 8)
    assert chance == pytest.approx(1.5625)
    # at chance: λ rises over the warm-up and is held, however long it takes
    for step in range(40):
        objective.observe(chance, epoch=step / 4)
    assert objective.anneal_from is None and objective.lambda_at(9, 0, 4, 30) == 2.0
    # the head learns: the running mean of L1/chance crosses 0.3 some steps later, then λ anneals
    epoch = 10.0
    while objective.anneal_from is None:
        objective.observe(0.1 * chance, epoch=epoch)
        epoch += 0.25
        assert epoch < 15
    start = objective.anneal_from
    assert 10 < start < 15 and objective.task_ratio < 0.3
    assert objective.lambda_at(30, 0, 4, 30) == 0.0
    assert objective.lambda_at(int(start) + 1, 0, 4, 30) == pytest.approx(2.0 * (30 - (int(start) + 1)) / (30 - start))
    # a learned head during the warm-up does not cut the warm-up short
    early = adaptive(warmup=5)
    for step in range(20):
        early.observe(0.0, epoch=step / 10)
    assert early.anneal_from is None
    early.observe(0.0, epoch=5.0)
    assert early.anneal_from == 5.0 and drloc_lambda(2.0, 4.0, 30, "adaptive", 5, anneal_from=5.0) == pytest.approx(1.6)


def test_adaptive_options_are_checked():
    with pytest.raises(ValueError, match="task_threshold=0 must lie in"):
        DrLocConfig(schedule="adaptive", task_threshold=0)
    with pytest.raises(ValueError, match="needs mode='l1', not mode='ce'"):
        DrLocConfig(schedule="adaptive", mode="ce")


def test_adaptive_state_survives_a_checkpoint():
    kwargs = dict(
        model_kwargs=dict(img_size=32, patch_size=4, depth=1, embed_dim=32, num_heads=2),
        hidden_dims=[16],
        drloc=dict(schedule="adaptive", lambda_warmup_epochs=1),
    )
    module = DrLocModule("vit_tiny_patch16_224", num_classes=10, lambda_drloc=1.0, **kwargs)
    module.objective.task_ratio, module.objective.anneal_from = 0.2, 7.5
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["drloc_schedule_state"] == {"task_ratio": 0.2, "anneal_from": 7.5}
    again = DrLocModule("vit_tiny_patch16_224", num_classes=10, lambda_drloc=1.0, **kwargs)
    again.on_load_checkpoint(checkpoint)
    assert again.objective.anneal_from == 7.5
    assert again.objective.lambda_at(8, 0, 1, 10) == module.objective.lambda_at(8, 0, 1, 10)
    assert torch.isfinite(torch.tensor(again.objective.lambda_at(8, 0, 1, 10)))
