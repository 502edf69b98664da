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

import difflib
import functools
import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vt_drloc.core.discover import PROBE_BATCH, GridReading, to_grid, unwrap_output
from vt_drloc.core.errors import DrLocConfigError

STRATEGIES = ("intermediates", "features")
TAP_NORMS = ("pre", "post")
MIN_GRID = 2


class GridTapError(DrLocConfigError):
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
    size = fixed_input_size(model)
    if size is not None:
        return size
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    if size is not None:
        return int(size[-2]), int(size[-1])
    return 224, 224


def model_in_chans(model: nn.Module) -> int:
    """Input channels of ``model``: its ``in_chans``, else its pretrained cfg's, else 3."""
    return int(
        getattr(model, "in_chans", None) or (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3,))[0]
    )


def _num_prefix_tokens(model: Any) -> int:  # the timm surface is duck-typed
    if getattr(model, "num_prefix_tokens", None) is not None:
        return int(model.num_prefix_tokens)
    count = sum(getattr(model, name, None) is not None for name in ("cls_token", "class_token", "dist_token"))
    reg = getattr(model, "reg_token", None)
    return count + (reg.shape[1] if isinstance(reg, Tensor) and reg.dim() == 3 else 0)


def check_tap_norm(tap_norm: str) -> str:
    if tap_norm not in TAP_NORMS:
        raise DrLocConfigError(f"tap_norm={tap_norm!r} is not valid; choose one of {', '.join(map(repr, TAP_NORMS))}")
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


def _last_intermediate(model: Any, x: Tensor, kwargs: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
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


def _features_and_tokens(model: Any, x: Tensor, tap_norm: str) -> tuple[Any, Any]:
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


def tap_grid(model: Any, x: Tensor, info: GridInfo) -> tuple[Any, Tensor]:
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
def _read_grid(model: nn.Module, x: Tensor, tap_norm: str) -> tuple[str, Tensor, dict[str, Any], int]:
    """``(strategy, grid, intermediates kwargs, prefix tokens)`` of one forward of ``x``: the last
    ``forward_intermediates`` grid where the model offers it, else ``forward_features``' tokens."""
    kwargs = _intermediates_kwargs(model, tap_norm)
    if kwargs is not None:
        grid, kwargs = _last_intermediate(model, x, kwargs)
        return "intermediates", grid, kwargs, 0
    prefix = _num_prefix_tokens(model)
    return "features", tokens_to_grid(_features_and_tokens(model, x, tap_norm)[1], model, prefix), {}, prefix


def zero_batch(
    model: nn.Module, input_size: tuple[int, int] | int | None = None, in_chans: int | None = None, batch: int = 2
) -> Tensor:
    """A zero image batch for ``model`` on its device and in its dtype: ``input_size`` (default: the size the
    model was built for, :func:`model_input_size`), ``in_chans`` (default :func:`model_in_chans`)."""
    if input_size is None:
        input_hw = model_input_size(model)
    else:
        input_hw = (
            (input_size, input_size) if isinstance(input_size, int) else (int(input_size[-2]), int(input_size[-1]))
        )
    param = next(model.parameters(), None)
    floating = param is not None and param.is_floating_point()
    return torch.zeros(
        batch,
        in_chans or model_in_chans(model),
        *input_hw,
        device=param.device if param is not None else None,
        dtype=param.dtype if param is not None and floating else None,
    )


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
    x = zero_batch(model, input_size, in_chans, batch=2)
    input_hw = (int(x.shape[-2]), int(x.shape[-1]))
    was_training = model.training
    model.eval()
    try:
        try:
            strategy, grid, kwargs, prefix = _read_grid(model, x, tap_norm)
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


# ---------------------------------------------------------------------------------------------
# Capturing the grid from a forward someone else runs (DrLocCallback): a hook reads the output of
# a named module, the input of a final norm, or forward_features' output.

GRID_FORMATS = ("auto", "tokens", "NCHW", "NHWC")
_PREFIX_ATTRS = (
    "num_prefix_tokens",
    "cls_token",
    "class_token",
    "dist_token",
    "distillation_token",
    "reg_token",
    "register_tokens",
)


def is_timm_model(module: nn.Module) -> bool:
    """A timm model: ``forward_features`` + ``forward_head`` and made by timm (or ``timm.create_model``)."""
    has_surface = callable(getattr(module, "forward_features", None)) and callable(
        getattr(module, "forward_head", None)
    )
    from_timm = type(module).__module__.startswith("timm.") or getattr(module, "pretrained_cfg", None) is not None
    return has_surface and from_timm


def find_timm_models(root: nn.Module) -> list[str]:
    """Names of the outermost timm models among ``root``'s submodules (``""`` for ``root`` itself)."""
    found: list[str] = []
    for name, module in root.named_modules():
        if any(name == f or name.startswith(f + ".") or f == "" for f in found):
            continue
        if is_timm_model(module):
            found.append(name)
    return found


class BackboneLookupError(DrLocConfigError, LookupError):
    """The backbone / tap a face was told to read (or should find) is not there; the message names the fix."""


def get_submodule(root: nn.Module, path: str, arg: str) -> nn.Module:
    """``root``'s submodule at the dotted ``path``; an unknown path raises :class:`BackboneLookupError`
    with the closest names (``arg``: the argument that named it, for the message)."""
    names = dict(root.named_modules())
    if path not in names:
        close = difflib.get_close_matches(path, [n for n in names if n], n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise BackboneLookupError(
            f"DrLocCallback({arg}={path!r}): {type(root).__name__} has no submodule {path!r}.{hint}"
        )
    return names[path]


def find_backbone(
    root: nn.Module, backbone: str | None = None, tap: str | None = None
) -> tuple[nn.Module | None, nn.Module | None, str]:
    """``(backbone, tap module, backbone name)`` inside ``root`` (a LightningModule): exactly one route,
    a backbone with ``forward_features`` (named, or the unique timm model among the submodules), or a
    named ``tap`` (with an optional named backbone that owns it); a named backbone without
    ``forward_features`` is returned as it is (its grid is discovered); ``(None, None, "")`` when neither is
    named and no timm model is there (the grid is then discovered by what runs). Raises
    :class:`BackboneLookupError` naming the fix for an unknown name or more than one timm model."""
    named = get_submodule(root, backbone, "backbone") if backbone is not None else None
    if tap is not None:
        return named, get_submodule(root, tap, "tap"), backbone or ""
    if named is not None:
        found_backbone, name = named, str(backbone)
    else:
        found = find_timm_models(root)
        cls = type(root).__name__
        if not found:
            return None, None, ""  # no timm model: the caller finds the grid by what runs (vt_drloc.core.discover)
        if len(found) > 1:
            raise BackboneLookupError(
                f"DrLocCallback found {len(found)} timm models in {cls}: "
                f"{', '.join(repr(n or '<module>') for n in found)}. Name the one to train with DRLoc: "
                "DrLocCallback(backbone=...)."
            )
        found_backbone = root if found[0] == "" else get_submodule(root, found[0], "backbone")
        name = found[0] or cls
    return found_backbone, None, name


def prefix_owner(root: nn.Module, path: str) -> nn.Module | None:
    """Nearest parent of the module at ``path`` (or that module) that knows its prefix tokens."""
    parts = path.split(".")
    modules = dict(root.named_modules())
    for depth in range(len(parts), -1, -1):
        module = modules.get(".".join(parts[:depth]))
        if module is not None and any(getattr(module, a, None) is not None for a in _PREFIX_ATTRS):
            return module
    return None


def fixed_input_size(model: nn.Module | None) -> tuple[int, int] | None:
    """(H, W) a model is built for when it says so, else None: timm's ``img_size`` (on the model or its
    ``patch_embed``), torchvision's ``image_size``, or a Hugging Face config's ``image_size``."""
    if model is None:
        return None
    for owner in (model, getattr(model, "patch_embed", None), *model.modules()):
        for size in (
            getattr(owner, "img_size", None),
            getattr(owner, "image_size", None),
            getattr(getattr(owner, "config", None), "image_size", None),
        ):
            if isinstance(size, int) and not isinstance(size, bool):
                return (size, size)
            if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size):
                return (int(size[0]), int(size[1]))
    return None


def sample_input_shape(dataset: Any) -> tuple[int, ...] | None:
    """The (C, H, W) of a map-style dataset's first sample (its image: the first tensor in a tuple /
    list / dict sample), read by index so no loader is iterated; None when it cannot tell."""
    if dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        return None
    try:
        if len(dataset) == 0:
            return None
        sample = dataset[0]
    except Exception:
        return None
    items = sample.values() if isinstance(sample, dict) else sample if isinstance(sample, (tuple, list)) else (sample,)
    for item in items:
        if isinstance(item, Tensor) and item.dim() == 3:
            return tuple(int(d) for d in item.shape)
    return None


def probe_input(
    runner: nn.Module,
    *,
    input_size: Sequence[int] | int | None = None,
    in_chans: int | None = None,
    example_input: Any = None,
    training_dataset: Callable[[], Any] | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor | None:
    """The zero batch (PROBE_BATCH, C, H, W) that sizes the grid of ``runner``, from the first source that knows
    the input size: ``input_size`` (H, W) or int; the size the model is built for (``img_size``);
    ``example_input`` (a tensor, e.g. a LightningModule's ``example_input_array``); the first sample
    of ``training_dataset()`` (called only when needed, so nothing is loaded for nothing; no loader is
    iterated); a timm model's pretrained cfg. None when none can tell.

    Channels: ``in_chans``, else the sample's, else the model's ``in_chans``, else its cfg's, else 3.
    """
    hw: tuple[int, ...] | None = None
    if input_size is not None:
        hw = (input_size, input_size) if isinstance(input_size, int) else (int(input_size[-2]), int(input_size[-1]))
    elif (fixed := fixed_input_size(runner)) is not None:
        hw = fixed
    elif isinstance(example_input, Tensor):
        return torch.zeros((PROBE_BATCH, *example_input.shape[1:]), dtype=example_input.dtype, device=device)
    elif training_dataset is not None and (shape := sample_input_shape(training_dataset())) is not None:
        in_chans = in_chans or shape[0]
        hw = shape[1:]
    elif is_timm_model(runner):
        hw = model_input_size(runner)  # its pretrained cfg's size (no img_size, checked above)
    else:
        return None
    return torch.zeros(PROBE_BATCH, int(in_chans or model_in_chans(runner)), *hw, device=device, dtype=dtype)


def patch_method(obj: Any, name: str, wrap: Any) -> Any:
    """Set ``obj.<name>`` to ``wrap(original bound method)`` as an instance attribute; returns the undo
    (which restores an instance attribute the object had, or removes ours)."""
    original = getattr(obj, name)
    had_instance_attr = name in obj.__dict__
    setattr(obj, name, functools.wraps(original)(wrap(original)))

    def undo() -> None:
        if had_instance_attr:
            setattr(obj, name, original)
        else:
            obj.__dict__.pop(name, None)

    return undo


_NAME_THE_TAP = (
    "If this is not the last stage's grid, name the module whose output is with tap='...', or train with "
    "DrLocModule, which reads forward_intermediates."
)


class GridCapture:
    """Captures the grid of a forward run by other code (the user's ``training_step``).

    Attach one route (:meth:`hook_output`, :meth:`hook_norm_input` or :meth:`wrap_forward_features`),
    then :meth:`probe` once to learn the layout (tokens / NCHW / NHWC, prefix tokens) and the grid's
    shape, and :meth:`capture` around every training forward. :meth:`detach` undoes the hooks.
    """

    def __init__(self, grid_format: str = "auto", prefix_tokens: int | None = None):
        if grid_format not in GRID_FORMATS:
            raise DrLocConfigError(
                f"grid_format={grid_format!r} is not valid; choose one of {', '.join(map(repr, GRID_FORMATS))}"
            )
        if prefix_tokens is not None and int(prefix_tokens) < 0:
            raise DrLocConfigError(f"prefix_tokens={prefix_tokens} must be >= 0")
        self.grid_format = grid_format
        self.prefix_tokens = None if prefix_tokens is None else int(prefix_tokens)
        self.name = ""
        self.owner: nn.Module | None = None
        self.format = "tokens"
        self.prefix = 0
        self.reading: GridReading | None = None  # set by the callback for a tapped / discovered grid
        self.calls = 0
        self._mode: str | None = None
        self._captured: Any = None
        self._undo: list[Any] = []

    # -- routes
    def _record(self, output: Any) -> None:
        if self._mode is None:
            return
        self.calls += 1
        output = unwrap_output(output)
        if self._captured is None and (self._mode == "probe" or getattr(output, "requires_grad", False)):
            self._captured = output

    def hook_output(self, module: nn.Module, name: str, owner: nn.Module | None) -> None:
        """Capture ``module``'s output (a named tap)."""
        self.name, self.owner = name, owner
        self._undo.append(module.register_forward_hook(lambda _m, _args, output: self._record(output)).remove)

    def hook_norm_input(self, norm: nn.Module, name: str, owner: nn.Module) -> None:
        """Capture the input of ``norm`` (a backbone's final norm: the un-normed last stage)."""
        self.name, self.owner = name, owner
        self._undo.append(norm.register_forward_pre_hook(lambda _m, args: self._record(args[0])).remove)

    def wrap_forward_features(self, backbone: nn.Module, name: str) -> None:
        """Capture ``backbone.forward_features``' output (an instance attribute, removed by :meth:`detach`)."""
        self.name, self.owner = name, backbone

        def wrap(original: Any) -> Any:
            def forward_features(*args: Any, **kwargs: Any) -> Any:
                out = original(*args, **kwargs)
                self._record(out)
                return out

            return forward_features

        self._undo.append(patch_method(backbone, "forward_features", wrap))

    def attach_backbone(self, backbone: nn.Module, tap_norm: str, name: str) -> None:
        """The route for a backbone read through ``forward_features``: the input of its final norm
        (``tap_norm="pre"``, the last stage's tokens in forward_features' own layout), else the output."""
        norm = final_norm(backbone) if check_tap_norm(tap_norm) == "pre" else None
        if norm is not None:
            self.hook_norm_input(norm, f"backbone {name!r} (input of its final norm)", backbone)
        else:
            self.wrap_forward_features(backbone, f"backbone {name!r} (forward_features)")

    def detach(self) -> None:
        while self._undo:
            self._undo.pop()()
        self._mode, self._captured, self.reading = None, None, None

    # -- capture
    @property
    def active(self) -> bool:
        """Whether a capture is under way (outside :meth:`capture` / :meth:`probe` hooks record nothing)."""
        return self._mode is not None

    def capture(self, fn: Any, *args: Any, mode: str = "train", **kwargs: Any) -> tuple[Any, Any]:
        """``(fn(*args, **kwargs), raw)``: ``raw`` is the first captured output (in ``"train"`` mode the
        first that requires grad), or None."""
        self._mode, self._captured, self.calls = mode, None, 0
        try:
            out = fn(*args, **kwargs)
            return out, self._captured
        finally:
            self._mode, self._captured = None, None

    @torch.no_grad()
    def probe(self, runner: nn.Module, x: Tensor, root: nn.Module) -> tuple[int, int, int]:
        """One forward of ``x`` through ``runner`` in eval mode (``root``'s modes restored): learns the
        layout and returns the grid's (C, H, W)."""
        modes = [(m, m.training) for m in root.modules()]
        root.eval()
        try:
            _, raw = self.capture(runner, x, mode="probe")
        except Exception as err:
            raise GridTapError(
                f"DRLoc could not run {type(runner).__name__} on a zero batch of shape {tuple(x.shape)} to size the "
                f"DRLoc head: {type(err).__name__}: {err}. Pass input_size=(H, W) / in_chans=... as the model expects."
            ) from err
        finally:
            for module, mode in modes:
                module.training = mode
        if raw is None:
            raise GridTapError(
                f"DRLoc: a forward of {type(runner).__name__} never reached the {self.name}. {_NAME_THE_TAP}"
            )
        if not isinstance(raw, Tensor):
            raise GridTapError(f"DRLoc: the {self.name} returned {type(raw).__name__}, not a tensor.")
        self.format = self._resolve_format(raw)
        if self.format == "tokens":
            self.prefix = (
                self.prefix_tokens
                if self.prefix_tokens is not None
                else (_num_prefix_tokens(self.owner) if self.owner is not None else 0)
            )
        try:
            grid = self.to_grid(raw)
        except GridTapError as err:
            raise GridTapError(
                f"DRLoc: the {self.name} output {tuple(raw.shape)} is not a usable grid: {err}. "
                f"Set prefix_tokens= (class / register tokens) or grid_format= to match it. {_NAME_THE_TAP}"
            ) from err
        _, channels, height, width = grid.shape
        if min(height, width) < MIN_GRID:
            raise GridTapError(
                f"DRLoc: the {self.name} yields a {height}x{width} grid of {channels} channels at input "
                f"{tuple(x.shape[-2:])}; DRLoc needs at least {MIN_GRID}x{MIN_GRID}. Use a smaller patch / stride or a "
                f"larger input. {_NAME_THE_TAP}"
            )
        return int(channels), int(height), int(width)

    @torch.no_grad()
    def check_backbone(self, backbone: nn.Module, x: Tensor, tap_norm: str) -> None:
        """After :meth:`probe` on a backbone route: the grid the hooks capture must be the grid
        :func:`probe_grid` / :func:`tap_grid` read (what ``DrLocModule`` trains on). Compared on a
        random batch in eval mode; models without ``forward_intermediates`` are not checked. A model
        whose ``norm`` / ``forward_features`` is not its last stage's grid (e.g. a convolutional neck
        after it, or tokens kept in another order) raises :class:`GridTapError` naming the fix."""
        if getattr(backbone, "forward_intermediates", None) is None:
            return
        modes = [(m, m.training) for m in backbone.modules()]
        backbone.eval()
        try:
            gen = torch.Generator(device="cpu").manual_seed(0)
            xr = torch.randn(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)
            _, raw = self.capture(backbone, xr, mode="probe")
            try:
                ref = _read_grid(backbone, xr, tap_norm)[1]
            except Exception as err:  # a forward_intermediates of another shape: nothing to compare with
                warnings.warn(
                    f"DRLoc could not read {type(backbone).__name__}'s last stage through forward_intermediates "
                    f"({type(err).__name__}: {err}), so the grid of the {self.name} is used unchecked.",
                    stacklevel=2,
                )
                return
        finally:
            for module, mode in modes:
                module.training = mode
        grid = None if raw is None else self.to_grid(raw)
        # the same computation by two routes: equal up to the dtype's rounding (fp16 / bf16 ~1e-3)
        tol = max(1e-4, 8 * torch.finfo(ref.dtype).eps) if ref.is_floating_point() else 0.0
        if grid is None or grid.shape != ref.shape or not torch.allclose(grid, ref, rtol=tol, atol=tol, equal_nan=True):
            found = "nothing" if grid is None else f"a grid of shape {tuple(grid.shape)}"
            raise GridTapError(
                f"DRLoc: reading the {self.name} with a hook gives {found}, but the last stage of "
                f"{type(backbone).__name__} (forward_intermediates, tap_norm={tap_norm!r}) is a grid of shape "
                f"{tuple(ref.shape)} with other values: its norm / forward_features is not its last stage's grid. "
                "Name the module whose output is the grid with tap='...', or train with DrLocModule, which reads "
                "forward_intermediates."
            )

    def _resolve_format(self, raw: Tensor) -> str:
        if self.grid_format != "auto":
            expected = 3 if self.grid_format == "tokens" else 4
            if raw.dim() != expected:
                raise GridTapError(
                    f"grid_format={self.grid_format!r} expects a {expected}-D output, the {self.name} gave "
                    f"{tuple(raw.shape)}"
                )
            return self.grid_format
        if raw.dim() == 3:
            return "tokens"
        if raw.dim() != 4:
            raise GridTapError(
                f"DRLoc: the {self.name} output {tuple(raw.shape)} holds no spatial grid; expected (B, N, C), NCHW or "
                "NHWC."
            )
        owner = self.owner
        if owner is not None and (
            getattr(owner, "output_fmt", None) is not None or getattr(owner, "num_features", None) is not None
        ):
            return "NCHW" if tokens_to_grid(raw, owner) is raw else "NHWC"
        _, d1, d2, d3 = raw.shape
        if d2 == d3 and d1 != d2:
            return "NCHW"
        if d1 == d2 and d3 != d1:
            return "NHWC"
        raise GridTapError(
            f"DRLoc cannot tell whether the {self.name} output {tuple(raw.shape)} is NCHW or NHWC; pass grid_format=."
        )

    def to_grid(self, raw: Tensor) -> Tensor:
        """The (B, C, H, W) grid of a captured output, in the layout :meth:`probe` found."""
        if self.reading is not None:
            return to_grid(raw, self.reading)
        if self.format == "tokens":
            return tokens_to_grid(raw, self.owner or nn.Module(), self.prefix)
        return raw.permute(0, 3, 1, 2) if self.format == "NHWC" else raw
