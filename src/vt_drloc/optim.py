"""Optimizer pieces both faces use: AdamW parameter groups and the warm-up + cosine LR factor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from timm.optim import param_groups_weight_decay
from torch import Tensor, nn


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_factor: float, warmup_prefix: bool = True) -> float:
    """LR multiplier: linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine to ``min_factor``
    at ``total_steps``.

    ``warmup_prefix=True`` (default): the cosine spans the steps after the warm-up.
    ``warmup_prefix=False``: the cosine is laid out from step 0, so the warm-up covers its first
    part, as timm's ``CosineLRScheduler`` (default ``warmup_prefix=False``) in the released code.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    start = warmup_steps if warmup_prefix else 0
    progress = min(1.0, (step - start) / max(1, total_steps - start))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def weight_decay_groups(modules: Sequence[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups over ``modules``: weights decayed; norms, biases and the model's
    ``no_weight_decay()`` names (position embeddings, class tokens, ...) not decayed."""
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for module in modules:
        skip = module.no_weight_decay() if hasattr(module, "no_weight_decay") else set()
        for group in param_groups_weight_decay(module, weight_decay, no_weight_decay_list=skip):
            (decay if group["weight_decay"] > 0 else no_decay).extend(group["params"])
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
