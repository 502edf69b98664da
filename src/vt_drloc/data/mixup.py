"""Mixup / CutMix on device, with soft targets ``(B, num_classes)`` float.

``DrLocModule`` treats a 2-D float target as soft targets (soft-target cross-entropy), so a batch
returned by :func:`apply_mixup` can be fed to it directly.
"""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target

MIXUP_MODES = ("batch", "pair", "elem")


def build_mixup(
    num_classes: int,
    *,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: str = "batch",
    label_smoothing: float = 0.0,
) -> Mixup | None:
    """timm's ``Mixup`` for these settings, or ``None`` when both alphas are 0 (mixing off)."""
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha={mixup_alpha} and cutmix_alpha={cutmix_alpha} must be >= 0")
    if not 0.0 <= prob <= 1.0 or not 0.0 <= switch_prob <= 1.0:
        raise ValueError(f"mixup_prob={prob} and mixup_switch_prob={switch_prob} must lie in [0, 1]")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 1)")
    if mode not in MIXUP_MODES:
        raise ValueError(f"mixup_mode={mode!r} is not one of {MIXUP_MODES}")
    if mixup_alpha == 0 and cutmix_alpha == 0:
        return None
    return Mixup(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        switch_prob=switch_prob,
        mode=mode,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )


def apply_mixup(batch, mixup_fn: Mixup | None):
    """Mix an ``(images, labels)`` batch; labels become float soft targets ``(B, num_classes)``.

    timm's ``Mixup`` pairs sample ``i`` with ``B-1-i`` and needs an even batch; with an odd batch
    (a last partial batch) the final sample is left unmixed and gets the (smoothed) one-hot target.
    Returns the batch unchanged when ``mixup_fn`` is ``None`` or the labels are already soft.
    """
    if mixup_fn is None:
        return batch
    x, y = batch[0], batch[1]
    if y.ndim != 1:  # already soft targets
        return batch
    n = x.shape[0]
    if n < 2:
        soft = mixup_target(y, mixup_fn.num_classes, 1.0, mixup_fn.label_smoothing)
        return _rebuild(batch, x, soft.float())
    if n % 2 == 0:
        x, soft = mixup_fn(x, y)
    else:
        head_x, head_y = mixup_fn(x[:-1], y[:-1])
        tail_y = mixup_target(y[-1:], mixup_fn.num_classes, 1.0, mixup_fn.label_smoothing)
        x = torch.cat([head_x, x[-1:]], dim=0)
        soft = torch.cat([head_y, tail_y], dim=0)
    return _rebuild(batch, x, soft.float())


def _rebuild(batch, x, y):
    out = (x, y, *batch[2:])
    return list(out) if isinstance(batch, list) else out
