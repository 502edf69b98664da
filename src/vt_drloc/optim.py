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


# per-parameter-group lists of torch (and timm) LR schedulers
_SCHEDULER_GROUP_LISTS = ("base_lrs", "lr_lambdas", "min_lrs", "max_lrs", "_last_lr", "base_values")


def extend_scheduler(scheduler: Any, old_groups: int, added: int) -> None:
    """Give a scheduler built for ``old_groups`` parameter groups entries for ``added`` more (copies of group 0's)."""
    for attr in _SCHEDULER_GROUP_LISTS:
        values = getattr(scheduler, attr, None)
        if isinstance(values, list) and len(values) == old_groups and values:
            values.extend([values[0]] * added)
    for child in getattr(scheduler, "_schedulers", None) or ():
        extend_scheduler(child, old_groups, added)


def add_param_groups(optimizer: Any, module: nn.Module, schedulers: Sequence[Any] = ()) -> int:
    """Add ``module``'s parameters that ``optimizer`` does not hold yet, as new groups with group 0's
    hyper-parameters (weights decayed, norms / biases not, when group 0 decays), and extend the
    schedulers' per-group lists to match. Returns the number of groups added (0: nothing missing)."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = {id(p) for p in module.parameters() if id(p) not in held}
    if not missing:
        return 0
    template = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    template["initial_lr"] = template.get("initial_lr", template["lr"])
    weight_decay = template.get("weight_decay", 0.0) or 0.0
    groups = weight_decay_groups([module], weight_decay) if weight_decay > 0 else [{"params": list(module.parameters())}]
    old_groups = len(optimizer.param_groups)
    added = 0
    for group in groups:
        params = [p for p in group["params"] if id(p) in missing]
        if params:
            optimizer.add_param_group({**template, **group, "params": params})
            added += 1
    for scheduler in schedulers:
        extend_scheduler(scheduler, old_groups, added)
    return added
