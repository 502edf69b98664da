"""Position embeddings of a checkpoint made to fit a model built at another resolution, with
timm's own resampling helpers (``init_from`` of a 32 px run into a 64 px fine-tuning run).

* absolute embeddings, ``(1, N, C)`` tokens (ViT / DeiT ``pos_embed``, class tokens kept as they
  are) or ``(1, H, W, C)`` (Swin's ``absolute_pos_embed``): :func:`timm.layers.resample_abs_pos_embed`
  / :func:`timm.layers.resample_abs_pos_embed_nhwc`, bicubic on the token grid;
* Swin's ``relative_position_bias_table`` when the window size differs:
  :func:`timm.layers.resize_rel_pos_bias_table`.

Other tensors whose shape differs are left alone (the caller skips them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from timm.layers import resample_abs_pos_embed, resample_abs_pos_embed_nhwc, resize_rel_pos_bias_table

log = logging.getLogger("vt_drloc.init_from")


def _square_side(tokens: int) -> int | None:
    side = math.isqrt(tokens)
    return side if side * side == tokens else None


def _abs_tokens(backbone: torch.nn.Module, key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """(1, N, C) token embeddings: the prefix (class / distillation tokens) is kept, the grid resampled."""
    prefix = 0
    if key == "pos_embed" and not getattr(backbone, "no_embed_class", False):
        prefix = int(getattr(backbone, "num_prefix_tokens", 0))
    grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
    new_size = list(grid) if grid is not None and grid[0] * grid[1] == target.shape[1] - prefix else None
    if new_size is None:
        side = _square_side(target.shape[1] - prefix)
        new_size = None if side is None else [side, side]
    old_side = _square_side(value.shape[1] - prefix)
    if new_size is None or old_side is None:
        return None
    return resample_abs_pos_embed(value, new_size=new_size, old_size=[old_side, old_side], num_prefix_tokens=prefix)


def _resample(backbone: torch.nn.Module, key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    leaf = key.rsplit(".", 1)[-1]
    if "pos_embed" in leaf and value.shape[0] == target.shape[0] == 1 and value.shape[-1] == target.shape[-1]:
        if value.dim() == target.dim() == 4:  # (1, H, W, C)
            return resample_abs_pos_embed_nhwc(value, list(target.shape[1:3]))
        if value.dim() == target.dim() == 3:  # (1, N, C)
            return _abs_tokens(backbone, key, value, target)
    if (
        leaf == "relative_position_bias_table"
        and value.dim() == target.dim() == 2
        and value.shape[1] == target.shape[1]
    ):
        owner = backbone.get_submodule(key.rsplit(".", 1)[0]) if "." in key else backbone
        window = getattr(owner, "window_size", None)
        if window is not None:
            window = [window, window] if isinstance(window, int) else list(window)
            return resize_rel_pos_bias_table(value, new_window_size=window, new_bias_shape=list(target.shape))
    return None


def resample_position_embeddings(
    backbone: torch.nn.Module, state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``state`` (keys already matched to ``backbone``'s) with every position embedding whose
    shape differs from the backbone's resampled to it, and ``{key: "old shape -> new shape"}``.

    >>> import timm
    >>> small = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=1)
    >>> large = timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=4, depth=1)
    >>> state, resampled = resample_position_embeddings(large, small.state_dict())
    >>> resampled, tuple(state["pos_embed"].shape)
    ({'pos_embed': '(1, 65, 192) -> (1, 257, 192)'}, (1, 257, 192))
    """
    own = backbone.state_dict()
    out = dict(state)
    resampled: dict[str, str] = {}
    for key, value in state.items():
        target = own.get(key)
        if target is None or value.shape == target.shape:
            continue
        new = _resample(backbone, key, value, target)
        if new is None or new.shape != target.shape:
            continue
        out[key] = new.to(target.dtype)
        resampled[key] = f"{tuple(value.shape)} -> {tuple(target.shape)}"
        log.info(
            "init_from: resampled %s from %s to %s (timm's resampling)", key, tuple(value.shape), tuple(target.shape)
        )
    return out, resampled
