"""Grid tap: the classifier input and the final (B, C, k, k) token grid from ONE backbone forward.

Works on any model with timm's surface. The preferred route is timm's
``forward_intermediates(x, indices=1, intermediates_only=False)``: it returns both the final
features (fed to ``forward_head``, so the logits are exactly ``model(x)``) and the last stage as an
NCHW grid with class / distillation / register tokens removed. Models without
``forward_intermediates`` fall back to ``forward_features`` plus prefix-token removal and a reshape
(or an NHWC permute).

``tap_norm`` says whether the grid is read before or after the model's final norm:

* ``"pre"`` (default): the last stage's tokens as they leave the blocks, before the final norm, as
  the authors' released Swin-T and ViT fed DRLoc (the norm applied to the classifier's copy only).
  ``forward_intermediates(norm=False)``; in the fallback, the input of ``model.norm``.
* ``"post"``: after the final norm, the embeddings the classifier sees (the released T2T-ViT).
  ``forward_intermediates(norm=True)``; in the fallback, ``forward_features``' output.

A model without a final norm (ResNet, the released CvT) gives the same grid either way.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

STRATEGIES = ("intermediates", "features")
TAP_NORMS = ("pre", "post")
MIN_GRID = 2


class GridTapError(ValueError):
    """The model's final grid cannot serve DRLoc (too small, not square, or not reachable)."""


@dataclass(frozen=True)
class GridInfo:
    """What :func:`probe_grid` found: how to tap the model and the grid it yields."""

    strategy: str
    channels: int
    height: int
    width: int
    prefix_tokens: int = 0
    intermediates_kwargs: tuple[tuple[str, Any], ...] = ()
    tap_norm: str = "pre"

    @property
    def hw(self) -> tuple[int, int]:
        return (self.height, self.width)


def model_input_size(model: nn.Module) -> tuple[int, int]:
    """(H, W) the model was built for: ``patch_embed.img_size``, ``img_size``, or its pretrained cfg."""
    for owner in (getattr(model, "patch_embed", None), model):
        size = getattr(owner, "img_size", None)
        if size is not None:
            return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    if size is not None:
        return int(size[-2]), int(size[-1])
    return 224, 224


def _num_prefix_tokens(model: nn.Module) -> int:
    if getattr(model, "num_prefix_tokens", None) is not None:
        return int(model.num_prefix_tokens)
    count = sum(getattr(model, name, None) is not None for name in ("cls_token", "dist_token"))
    reg = getattr(model, "reg_token", None)
    return count + (reg.shape[1] if isinstance(reg, Tensor) and reg.dim() == 3 else 0)


def check_tap_norm(tap_norm: str) -> str:
    if tap_norm not in TAP_NORMS:
        raise ValueError(f"tap_norm={tap_norm!r} is not valid; choose one of {', '.join(map(repr, TAP_NORMS))}")
    return tap_norm


def final_norm(model: nn.Module) -> nn.Module | None:
    """The model's final norm module (timm's ``model.norm``), or None when it has none."""
    norm = getattr(model, "norm", None)
    return norm if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity) else None


def _intermediates_kwargs(model: nn.Module, tap_norm: str) -> dict[str, Any] | None:
    method = getattr(model, "forward_intermediates", None)
    if method is None:
        return None
    params = inspect.signature(method).parameters
    if "norm" not in params and tap_norm == "pre" and final_norm(model) is not None:
        return None  # cannot ask for the un-normed last stage: read the norm's input instead
    kwargs: dict[str, Any] = {"indices": 1, "intermediates_only": False}
    if "norm" in params:
        kwargs["norm"] = tap_norm == "post"
    if "output_fmt" in params:
        kwargs["output_fmt"] = "NCHW"
    return kwargs


def _last_intermediate(model: nn.Module, x: Tensor, kwargs: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """The last grid of ``forward_intermediates(x, **kwargs)`` and the kwargs that gave it. A model
    without a final norm that refuses ``norm=True`` (Hiera asserts ``not norm``) is asked again with
    ``norm=False``: with no final norm to apply, its post-norm grid is the un-normed one."""
    try:
        return model.forward_intermediates(x, **kwargs)[1][-1], kwargs
    except Exception:
        if not kwargs.get("norm") or final_norm(model) is not None:
            raise
    kwargs = {**kwargs, "norm": False}
    return model.forward_intermediates(x, **kwargs)[1][-1], kwargs


def _features_and_tokens(model: nn.Module, x: Tensor, tap_norm: str) -> tuple[Any, Any]:
    """``forward_features(x)`` and the tensor the grid is read from: that output ("post") or the
    input of the final norm ("pre", captured by a forward pre-hook during the same forward)."""
    norm = final_norm(model) if tap_norm == "pre" else None
    if norm is None:
        features = model.forward_features(x)
        return features, features
    captured: list[Tensor] = []
    handle = norm.register_forward_pre_hook(lambda _m, args: captured.append(args[0]) if not captured else None)
    try:
        features = model.forward_features(x)
    finally:
        handle.remove()
    if not captured:
        raise GridTapError("tap_norm='pre': forward_features never called model.norm; use tap_norm='post'")
    return features, captured[0]


def tokens_to_grid(features: Tensor, model: nn.Module, prefix_tokens: int | None = None) -> Tensor:
    """A (B, C, H, W) grid from ``forward_features`` output: tokens (B, N, C), NCHW or NHWC."""
    if features.dim() == 3:
        prefix = _num_prefix_tokens(model) if prefix_tokens is None else prefix_tokens
        tokens = features[:, prefix:]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise GridTapError(
                f"{tokens.shape[1]} tokens left after dropping {prefix} prefix token(s) do not form a square grid"
            )
        return tokens.transpose(1, 2).unflatten(-1, (side, side))
    if features.dim() == 4:
        channels = getattr(model, "num_features", None)
        nhwc = getattr(model, "output_fmt", None) == "NHWC" or (
            channels is not None and features.shape[-1] == channels and features.shape[1] != channels
        )
        return features.permute(0, 3, 1, 2) if nhwc else features
    raise GridTapError(f"forward_features returned shape {tuple(features.shape)}, which holds no spatial grid")


def tap_grid(model: nn.Module, x: Tensor, info: GridInfo) -> tuple[Any, Tensor]:
    """``(features, grid)``: pass ``features`` to ``model.forward_head``; ``grid`` is (B, C, H, W)."""
    if info.strategy == "intermediates":
        features, intermediates = model.forward_intermediates(x, **dict(info.intermediates_kwargs))
        return features, intermediates[-1]
    features, tokens = _features_and_tokens(model, x, info.tap_norm)
    return features, tokens_to_grid(tokens, model, info.prefix_tokens)


def _grid_error(name: str, found: str, input_hw: tuple[int, int], problem: str) -> GridTapError:
    return GridTapError(
        f"DRLoc cannot use model {name!r} at {input_hw[0]}x{input_hw[1]} px: {problem} (found {found}). "
        f"DRLoc needs a square final token grid of at least {MIN_GRID}x{MIN_GRID}. Fix: use a smaller "
        "patch / embedding stride (e.g. model_kwargs={'patch_size': 4} for a ViT at 32 px) or a larger "
        "input (model_kwargs={'img_size': 224}), or a model whose last stage is a spatial grid."
    )


@torch.no_grad()
def probe_grid(
    model: nn.Module,
    input_size: tuple[int, int] | int | None = None,
    name: str | None = None,
    in_chans: int | None = None,
    tap_norm: str = "pre",
) -> GridInfo:
    """Find how to tap ``model`` and the grid it yields, with one forward of a zero batch.

    ``tap_norm``: ``"pre"`` (default) or ``"post"`` the final norm; see the module docstring.

    Raises :class:`GridTapError` naming the model, the grid found and a fix when the grid is
    smaller than 2×2, not square, or cannot be reached.
    """
    name = name or type(model).__name__
    check_tap_norm(tap_norm)
    if input_size is None:
        input_hw = model_input_size(model)
    else:
        input_hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    in_chans = in_chans or getattr(model, "in_chans", None) or (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3,))[0]
    param = next(model.parameters(), None)
    x = torch.zeros(2, in_chans, *input_hw, device=param.device if param is not None else None)
    was_training = model.training
    model.eval()
    try:
        kwargs = _intermediates_kwargs(model, tap_norm)
        prefix = 0
        try:
            if kwargs is not None:
                strategy = "intermediates"
                grid, kwargs = _last_intermediate(model, x, kwargs)
            else:
                strategy = "features"
                kwargs = {}
                prefix = _num_prefix_tokens(model)
                grid = tokens_to_grid(_features_and_tokens(model, x, tap_norm)[1], model, prefix)
        except GridTapError as err:
            raise _grid_error(name, "no grid", input_hw, str(err)) from err
        except Exception as err:  # the model itself rejected the probe input
            raise GridTapError(
                f"DRLoc could not probe model {name!r} at {input_hw[0]}x{input_hw[1]} px: "
                f"{type(err).__name__}: {err}. Pass the input size the model was built for "
                "(model_kwargs={'img_size': ...} / input_size=...)."
            ) from err
    finally:
        model.train(was_training)
    if grid.dim() != 4:
        raise _grid_error(name, f"shape {tuple(grid.shape)}", input_hw, "the last stage is not a spatial grid")
    _, channels, height, width = grid.shape
    found = f"a {height}x{width} grid of {channels} channels"
    if height != width:
        raise _grid_error(name, found, input_hw, "the grid is not square")
    if height < MIN_GRID:
        raise _grid_error(name, found, input_hw, "the grid is too small")
    return GridInfo(strategy, int(channels), int(height), int(width), prefix, tuple(sorted(kwargs.items())), tap_norm)
