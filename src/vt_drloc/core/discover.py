"""Finding a backbone's final token grid by what runs, whatever the model's family.

``DrLocCallback`` uses this for every backbone that is not a timm model (Hugging Face
``transformers``, torchvision, a user's own ``nn.Module``), and to check a ``tap=`` it is given.
One no-grad forward of a zero batch in eval mode is recorded (:class:`ForwardRecord`): every
module's output, in the order the modules finish. The rules:

* **What an output holds.** A tensor is itself. A ``ModelOutput`` / dict / dataclass holds its
  ``last_hidden_state`` (the one named field every ``transformers`` backbone output has for the
  final token sequence); other fields and unnamed tuple elements are never read.
* **Layouts.** A tensor is a grid of k×k (or h×w, the input's aspect) cells in one of four layouts:
  tokens batch-first (B, N, C), tokens sequence-first (N, B, C), NCHW or NHWC. The probe batch has
  :data:`PROBE_BATCH` images, fewer than any usable token count, so the batch axis is never
  mistaken for the token axis.
* **Prefix tokens.** ``num_prefix_tokens`` where a module has it, else the tokens that parameters
  named like class / distillation / register tokens hold (``cls_token``, ``class_token``,
  ``dist_token``, ``distillation_token``, ``reg_token``, ``register_tokens``), else the smallest
  p <= :data:`MAX_UNNAMED_PREFIX` with N - p a square.
* **The final grid** is the last output with a grid reading that finishes after the first
  transformer block (a module holding an attention layer; models without one: any output), named
  by the innermost module that produced it. ``tap_norm="pre"`` reads the input of that module
  when it is a normalisation layer (the grid before the final norm, as the released runs fed DRLoc).
* Where one output admits two layouts (e.g. (B, 8, 8, 8)), discovery stops with
  :class:`GridDiscoveryError` listing them; a tap on an output that finishes before any transformer
  block (a patch embedding, an input layer) is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from vt_drloc.core.errors import DrLocConfigError

__all__ = [
    "LAYOUTS",
    "MAX_UNNAMED_PREFIX",
    "PROBE_BATCH",
    "ForwardRecord",
    "GridDiscoveryError",
    "GridReading",
    "GridSource",
    "find_final_grid",
    "grid_readings",
    "named_prefix_tokens",
    "to_grid",
    "unwrap_output",
]

PROBE_BATCH = 3  # fewer than the 4 tokens of the smallest usable grid (2x2): never read as a token axis
MAX_UNNAMED_PREFIX = 8  # N = k*k + p when no module names its prefix tokens
MIN_CHANNELS = 4  # a (B, C, 1) pooled output is not a grid of 1-channel tokens
LAYOUTS = {
    "BNC": "tokens (B, N, C)",
    "NBC": "tokens (N, B, C), sequence-first",
    "NCHW": "grid (B, C, H, W)",
    "NHWC": "grid (B, H, W, C)",
}
_PREFIX_PARAMS = ("cls_token", "class_token", "dist_token", "distillation_token", "reg_token", "register_tokens")


class GridDiscoveryError(DrLocConfigError):
    """No usable final grid, two readings of one, or a tap before the transformer blocks."""


@dataclass(frozen=True)
class GridReading:
    """One way to read a tensor as a grid."""

    layout: str
    prefix_tokens: int
    height: int
    width: int
    channels: int

    def describe(self) -> str:
        prefix = f", {self.prefix_tokens} prefix token(s) dropped" if self.layout in ("BNC", "NBC") else ""
        return f"{LAYOUTS[self.layout]}{prefix}: {self.height}x{self.width} grid of {self.channels} channels"


@dataclass(frozen=True)
class GridSource:
    """What ``DrLocCallback`` taps (its public ``grid_source`` after setup).

    Attributes:
        module: dotted path of the module, relative to the LightningModule (``""``: the module itself).
        point: ``"output"`` (the module's output), ``"input"`` (the input of a final norm) or ``"stage"``
            (multi-scale: the input of the module that downsamples an earlier stage's grid).
        layout: ``"BNC"``, ``"NBC"``, ``"NCHW"`` or ``"NHWC"`` (see :data:`LAYOUTS`).
        prefix_tokens: class / distillation / register tokens dropped (tokens layouts; else 0).
        grid: (H, W) of the grid, k x k for a square input.
        channels: C, the embedding size the DRLoc head reads.
        found: ``"discovered"`` (by what ran), ``"tap"`` (named by ``tap=``) or ``"backbone"`` (a timm
            backbone read through ``forward_features``).
    """

    module: str
    point: str
    layout: str
    prefix_tokens: int
    grid: tuple[int, int]
    channels: int
    found: str = "discovered"

    def __str__(self) -> str:
        where = {
            "input": f"input of {self.module!r} (before the final norm)",
            "stage": f"input of {self.module!r} (an earlier stage's grid)",
        }.get(self.point, f"output of {self.module!r}")
        reading = GridReading(self.layout, self.prefix_tokens, *self.grid, self.channels).describe()
        return f"{where}, {reading} [{self.found}]"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def unwrap_output(output: Any) -> Tensor | None:
    """The tensor an output holds: itself, or a ModelOutput's / dict's / dataclass's ``last_hidden_state``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        value = output.get("last_hidden_state")
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        value = getattr(output, "last_hidden_state", None)
    else:
        return None
    return value if isinstance(value, Tensor) else None


def named_prefix_tokens(model: nn.Module | None) -> int | None:
    """Prefix tokens ``model`` names: the outermost ``num_prefix_tokens``, else the tokens held by its
    class / distillation / register token parameters; None when nothing names them."""
    if model is None:
        return None
    seen: set[int] = set()
    count, named = 0, False
    for module in model.modules():
        value = getattr(module, "num_prefix_tokens", None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        for attr in _PREFIX_PARAMS:
            token = getattr(module, attr, None)
            if isinstance(token, Tensor) and id(token) not in seen:
                seen.add(id(token))
                named = True
                count += int(token.shape[-2]) if token.dim() >= 2 else 1
    return count if named else None


def _grid_hw(cells: int, input_hw: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) with h*w = cells and the input's aspect ratio, else None."""
    height, width = input_hw
    for h in range(1, cells + 1):
        if cells % h == 0 and h * width == (cells // h) * height:
            return h, cells // h
    return None


def grid_readings(
    t: Tensor,
    batch: int,
    input_hw: tuple[int, int],
    prefix_tokens: int | None = None,
    layouts: Sequence[str] = tuple(LAYOUTS),
) -> list[GridReading]:
    """Every reading of ``t`` (from a forward of ``batch`` images of size ``input_hw``) as a grid of at
    least 1x1 cells. ``prefix_tokens``: the tokens to drop (None: the smallest p that fits)."""
    found: list[GridReading] = []
    if t.dim() == 3:
        for layout, (n, b, c) in (("BNC", (t.shape[1], t.shape[0], t.shape[2])), ("NBC", tuple(t.shape))):
            if layout not in layouts or b != batch or n == batch or c < MIN_CHANNELS:
                continue
            for p in [prefix_tokens] if prefix_tokens is not None else range(min(MAX_UNNAMED_PREFIX, n - 1) + 1):
                hw = _grid_hw(n - p, input_hw) if n > p else None
                if hw is not None:
                    found.append(GridReading(layout, p, *hw, int(c)))
                    break
    elif t.dim() == 4 and t.shape[0] == batch:
        _, d1, d2, d3 = (int(d) for d in t.shape)
        if "NCHW" in layouts and d1 >= MIN_CHANNELS and _grid_hw(d2 * d3, input_hw) == (d2, d3):
            found.append(GridReading("NCHW", 0, d2, d3, d1))
        if "NHWC" in layouts and d3 >= MIN_CHANNELS and _grid_hw(d1 * d2, input_hw) == (d1, d2):
            found.append(GridReading("NHWC", 0, d1, d2, d3))
    return found


def to_grid(raw: Tensor, reading: GridReading) -> Tensor:
    """The (B, C, H, W) grid of ``raw`` read as ``reading``."""
    if reading.layout == "NCHW":
        return raw
    if reading.layout == "NHWC":
        return raw.permute(0, 3, 1, 2)
    tokens = raw.transpose(0, 1) if reading.layout == "NBC" else raw
    return tokens[:, reading.prefix_tokens :].transpose(1, 2).unflatten(-1, (reading.height, reading.width))


def is_attention(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return isinstance(module, nn.MultiheadAttention) or "attention" in name or name.endswith("attn")


def is_norm(module: nn.Module) -> bool:
    # batch / instance norms by their public classes (tests/test_lightning_private.py checks none is missing)
    norms: tuple[type, ...] = (
        nn.LayerNorm,
        nn.GroupNorm,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.SyncBatchNorm,
    )
    norms += (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LazyBatchNorm1d, nn.LazyBatchNorm2d)
    norms += (nn.LazyBatchNorm3d, nn.LazyInstanceNorm1d, nn.LazyInstanceNorm2d, nn.LazyInstanceNorm3d)
    if hasattr(nn, "RMSNorm"):
        norms += (nn.RMSNorm,)
    return isinstance(module, norms) or type(module).__name__.endswith("Norm")


@dataclass
class _Output:
    order: int
    name: str
    module: nn.Module
    tensor: Tensor | None
    kind: str  # the output's type name, for messages
    norm_input: Tensor | None = None


@dataclass
class _Input:
    name: str
    tensor: Tensor | None
    after_block: bool  # the first transformer block had finished when this module started


class ForwardRecord:
    """The outputs of every module of ``root`` during one forward of ``runner`` (hooks removed after);
    with ``inputs=True`` also every module's first positional input (multi-scale DRLoc's stages)."""

    def __init__(self, root: nn.Module, runner: nn.Module, x: Tensor, skip: Sequence[str] = (), inputs: bool = False):
        self.outputs: list[_Output] = []
        self.inputs: list[_Input] = []
        blocks = {id(m) for m in root.modules() if any(is_attention(s) for s in m.modules())}
        # modules inside a transformer block (a post-norm block's own norm is not the model's final norm)
        self.block_names = [
            n
            for n, m in root.named_modules()
            if id(m) in blocks and any(is_attention(s) for s in m.children()) or isinstance(m, nn.MultiheadAttention)
        ]
        self.first_block: int | None = None
        handles = []
        norm_inputs: dict[int, Tensor] = {}
        for name, module in root.named_modules():
            if any(name == s or name.startswith(s + ".") for s in skip):
                continue
            handles.append(module.register_forward_hook(self._hook(name, module, id(module) in blocks, norm_inputs)))
            if is_norm(module):
                handles.append(module.register_forward_pre_hook(self._pre_hook(module, norm_inputs)))
            if inputs:
                handles.append(module.register_forward_pre_hook(self._input_hook(name)))
        try:
            with torch.no_grad():
                runner(x)
        finally:
            for handle in handles:
                handle.remove()

    def _pre_hook(self, module: nn.Module, norm_inputs: dict[int, Tensor]) -> Any:
        def hook(_module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], Tensor):
                norm_inputs[id(module)] = args[0]

        return hook

    def _input_hook(self, name: str) -> Any:
        def hook(_module: nn.Module, args: tuple) -> None:
            tensor = args[0] if args and isinstance(args[0], Tensor) else None
            self.inputs.append(_Input(name, tensor, self.first_block is not None))

        return hook

    def _hook(self, name: str, module: nn.Module, is_block: bool, norm_inputs: dict[int, Tensor]) -> Any:
        def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
            order = len(self.outputs)
            if is_block and self.first_block is None:
                self.first_block = order
            tensor = unwrap_output(output)
            self.outputs.append(
                _Output(order, name, module, tensor, type(output).__name__, norm_inputs.pop(id(module), None))
            )

        return hook

    def in_block(self, name: str) -> bool:
        """Whether the module ``name`` sits inside a transformer block (a module whose child is attention)."""
        return any(name.startswith(b + ".") for b in self.block_names if b)

    def after_blocks(self, out: _Output) -> bool:
        """Whether ``out`` finished after the first transformer block (always, for a model without one)."""
        return self.first_block is None or out.order >= self.first_block

    def candidates(self, root_name: str = "") -> str:
        """The outputs a user may name with ``tap=``: path and shape, one per line (at most 12, the last)."""
        lines = []
        for out in self.outputs:
            if out.tensor is None or out.tensor.dim() not in (3, 4) or not out.name:
                continue
            where = "" if self.after_blocks(out) else "  (before the transformer blocks: refused)"
            lines.append(f"    tap={_join(root_name, out.name)!r}: {out.kind} {tuple(out.tensor.shape)}{where}")
        if len(lines) > 12:
            lines = ["    ..."] + lines[-12:]
        return "\n".join(lines) if lines else "    (no module returned a 3-D or 4-D tensor)"


def _inside(name: str, root: str) -> bool:
    return not root or name == root or name.startswith(root + ".")


def _parameter_free(module: nn.Module) -> bool:
    return next(iter(module.parameters()), None) is None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def find_final_grid(
    record: ForwardRecord,
    input_hw: tuple[int, int],
    *,
    prefix_for: Callable[[str], int | None],
    layouts: Sequence[str],
    tap_norm: str,
    model_name: str,
    within: str = "",
    min_grid: int = 2,
) -> tuple[_Output, GridReading, str]:
    """``(output, reading, point)`` of the final grid in ``record`` (see the module's rules), among the
    outputs of ``within`` and its submodules; ``prefix_for(name)``: the prefix tokens of a module's output."""
    found = [
        (out, readings)
        for out in record.outputs
        if out.tensor is not None and record.after_blocks(out) and _inside(out.name, within)
        for readings in [grid_readings(out.tensor, PROBE_BATCH, input_hw, prefix_for(out.name), layouts)]
        if readings and min(readings[0].height, readings[0].width) >= min_grid
    ]
    if not found:
        raise GridDiscoveryError(
            f"DRLoc found no final token grid in {model_name}: no module output after the first transformer block "
            f"holds a grid of at least {min_grid}x{min_grid} cells (tokens (B, N, C) or (N, B, C) with N = k*k + "
            f"prefix tokens, NCHW or NHWC) at input {input_hw[0]}x{input_hw[1]}. Name the module whose output is "
            f"the final grid with tap=... (and prefix_tokens= if needed); the candidates:\n{record.candidates()}"
        )
    sizes = [cast(Tensor, out.tensor).numel() for out, _ in found]
    index = len(found) - 1
    # a parameter-free layout step at the end (a Permute, Flatten, Dropout) is not the grid's source
    while index > 0 and _parameter_free(found[index][0].module) and sizes[index - 1] == sizes[index]:
        index -= 1
    last, readings = found[index]
    shape = tuple(cast(Tensor, last.tensor).shape)
    # the innermost module that produced the same tensor (a final norm rather than the encoder around it);
    # inside a block (a post-norm layer's own norm), the outermost: the block or the encoder that returns it
    same = [out for out, _ in found if out.tensor is last.tensor]
    chosen = same[0] if not record.in_block(same[0].name) else same[-1]
    if len(readings) > 1:
        listed = "; ".join(f"grid_format={_FORMAT_OF[r.layout]!r}: {r.describe()}" for r in readings)
        raise GridDiscoveryError(
            f"DRLoc cannot tell the layout of {chosen.name!r}'s output {shape} in {model_name}: "
            f"it reads equally as {listed}. Pass grid_format= to choose."
        )
    point = "output"
    if (
        tap_norm == "pre"
        and is_norm(chosen.module)
        and chosen.norm_input is not None
        and not record.in_block(chosen.name)
    ):
        if tuple(chosen.norm_input.shape) == shape:
            point = "input"
    return chosen, readings[0], point


_FORMAT_OF = {"BNC": "tokens", "NBC": "tokens", "NCHW": "NCHW", "NHWC": "NHWC"}
FORMAT_LAYOUTS = {"auto": tuple(LAYOUTS), "tokens": ("BNC", "NBC"), "NCHW": ("NCHW",), "NHWC": ("NHWC",)}
