"""Optimizer pieces both faces use: the optimizer a config names, AdamW-style parameter groups and
the warm-up + cosine LR factor."""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from timm.optim import param_groups_weight_decay
from torch import Tensor, nn

from vt_drloc.core.errors import DrLocConfigError
from vt_drloc.faces.lightning_private import nested_schedulers, scheduler_group_lists
from vt_drloc.faces.objective import plain

# set from the module's own arguments (optim.lr, optim.weight_decay) and its parameter groups
_OWNED_BY_MODULE = ("params", "lr", "weight_decay")


def optimizer_spec(optimizer: Any = None, betas: Sequence[float] = (0.9, 0.999)) -> dict[str, Any]:
    """The optimizer as a plain ``{"_target_": "<dotted class>", **kwargs}`` dict (what checkpoints
    store as a hyper-parameter), from any of the ways a user or Hydra names it:

    - ``None``: AdamW with ``betas`` (the paper's optimizer);
    - a mapping with ``_target_`` (``conf/optim``; ``_partial_`` is ignored);
    - a ``functools.partial`` of an optimizer class (what Hydra builds from ``_partial_: true``,
      as in lightning-hydra-template);
    - an optimizer class, or its dotted name (``"torch.optim.SGD"``).

    ``lr`` and ``weight_decay`` are the module's own arguments and may not appear in it. Raises
    ``ValueError`` naming a target that is no ``torch.optim.Optimizer``, or a keyword the class rejects.
    """
    if optimizer is None:
        return {"_target_": "torch.optim.AdamW", "betas": [float(b) for b in betas]}
    if isinstance(optimizer, functools.partial):
        if optimizer.args:
            raise DrLocConfigError(f"optimizer={optimizer!r}: give its settings as keywords, not positional arguments")
        target, kwargs = optimizer.func, dict(optimizer.keywords)
    elif isinstance(optimizer, Mapping):
        kwargs = {
            str(k): v for k, v in optimizer.items() if k not in ("_target_", "_partial_", "_recursive_", "_convert_")
        }
        if "_target_" not in optimizer:
            raise DrLocConfigError(
                f"optimizer={dict(optimizer)!r} has no _target_: name the class, e.g. _target_: torch.optim.SGD"
            )
        target = optimizer["_target_"]
    else:
        target, kwargs = optimizer, {}
    cls = _optimizer_class(target)
    clash = [k for k in _OWNED_BY_MODULE if k in kwargs]
    if clash:
        raise DrLocConfigError(
            f"optimizer ({_dotted(cls)}) sets {', '.join(clash)}: these come from the module's own arguments "
            "(optim.lr, optim.weight_decay; parameter groups are built by the module). Remove them from the optimizer."
        )
    spec = {
        "_target_": _dotted(cls),
        **{k: plain(v) for k, v in kwargs.items()},
    }  # no OmegaConf nodes: weights_only loads
    try:  # bad keywords fail here, at construction, not at the first training step
        build_optimizer(spec, [nn.Parameter(torch.zeros(1))], lr=1e-3, weight_decay=0.0)
    except TypeError as err:
        raise DrLocConfigError(f"optimizer {spec}: {err}") from None
    return spec


def build_optimizer(
    spec: Mapping[str, Any], params: Any, lr: float, weight_decay: float | None = None
) -> torch.optim.Optimizer:
    """Instantiate an :func:`optimizer_spec` over ``params`` (tensors or parameter groups)."""
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    if weight_decay is not None:
        kwargs["weight_decay"] = weight_decay
    return _optimizer_class(spec["_target_"])(params, lr=lr, **kwargs)


def _optimizer_class(target: Any) -> type:
    if isinstance(target, str):
        module_name, _, class_name = target.rpartition(".")
        try:  # a dotted path, as Hydra's _target_ (resolved here so the faces need no Hydra)
            target = getattr(importlib.import_module(module_name), class_name)
        except Exception as err:
            raise DrLocConfigError(
                f"optimizer _target_={target!r} cannot be imported ({err}); e.g. torch.optim.AdamW, torch.optim.SGD"
            ) from None
    if not (isinstance(target, type) and issubclass(target, torch.optim.Optimizer)):
        raise DrLocConfigError(
            f"optimizer _target_={target!r} is not a torch.optim.Optimizer class; e.g. torch.optim.AdamW, "
            "torch.optim.SGD"
        )
    return target


def _dotted(cls: type) -> str:
    if getattr(torch.optim, cls.__name__, None) is cls:
        return f"torch.optim.{cls.__name__}"  # the public name, not torch.optim.adamw.AdamW
    return f"{cls.__module__}.{cls.__qualname__}"


def warmup_cosine_factor(
    step: int, total_steps: int, warmup_steps: int, min_factor: float, warmup_prefix: bool = True
) -> float:
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
        no_weight_decay = getattr(module, "no_weight_decay", None)
        skip = no_weight_decay() if callable(no_weight_decay) else set()
        for group in param_groups_weight_decay(module, weight_decay, no_weight_decay_list=skip):
            (decay if group["weight_decay"] > 0 else no_decay).extend(group["params"])
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def extend_scheduler(scheduler: Any, old_groups: int, added: int) -> None:
    """Give a scheduler built for ``old_groups`` parameter groups entries for ``added`` more (copies of group 0's)."""
    for _, values in scheduler_group_lists(scheduler):
        if len(values) == old_groups and values:
            values.extend([values[0]] * added)
    for child in nested_schedulers(scheduler):
        extend_scheduler(child, old_groups, added)


def add_param_groups(
    optimizer: Any, module: nn.Module, schedulers: Sequence[Any] = (), weight_decay: float | None = None
) -> int:
    """Add ``module``'s parameters that ``optimizer`` does not hold yet, as new groups with group 0's
    hyper-parameters (weights decayed, norms / biases not, when group 0 decays; ``weight_decay``
    replaces group 0's decay), and extend the schedulers' per-group lists to match. Returns the
    number of groups added (0: nothing missing)."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = {id(p) for p in module.parameters() if id(p) not in held}
    if not missing:
        return 0
    template = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    template["initial_lr"] = template.get("initial_lr", template["lr"])
    if weight_decay is None:
        weight_decay = template.get("weight_decay", 0.0) or 0.0
    groups = (
        weight_decay_groups([module], weight_decay)
        if weight_decay > 0
        else [{"params": list(module.parameters()), "weight_decay": weight_decay}]
    )
    old_groups = len(optimizer.param_groups)
    added = 0
    for group in groups:
        params = [p for p in cast(list, group["params"]) if id(p) in missing]
        if params:
            optimizer.add_param_group({**template, **group, "params": params})
            added += 1
    for scheduler in schedulers:
        extend_scheduler(scheduler, old_groups, added)
    return added
