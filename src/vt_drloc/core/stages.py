"""Multi-scale DRLoc: the loss on several stages of a hierarchical backbone, each stage with its own head.

The released code offers this for Swin (the loss on every stage's output, summed; off in its runs).
Here it works for any backbone whose grid gets coarser between stages (Swin, CvT, PVT, a ResNet, the
``transformers`` and torchvision Swins): ``stages="all"`` (every stage) or a list of stage indices
(0 = the finest, -1 = the final grid). A backbone whose blocks keep one grid (a plain ViT) has one
stage, the final grid, so ``"all"`` equals ``"last"`` there.

**Which tensor is a stage's grid.** The final stage is the final grid the single-scale tap reads
(:mod:`vt_drloc.core.tap`, :mod:`vt_drloc.core.discover`). Every earlier stage is found by what
runs: the *input* of a module whose output is a coarser grid than its input (a patch merging, a
strided conv embedding, a downsampling stage), recorded after the first transformer block has run,
outside any block (a reduction inside attention, as PVT's keys and values, is not a stage).
That input is the stage's full output, with its residuals, whatever the library returns around it
(``transformers`` stages return tuples; torchvision's are ``nn.Sequential`` items). The grid read at
train time is that module's input, captured by a forward pre-hook during the same forward that
gives the logits.

>>> loss = MultiScaleDrLocLoss([(8, (8, 8)), (16, (4, 4))], sample_size=4)
>>> value = loss([torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)], generator=torch.Generator().manual_seed(0))
>>> value.shape, len(loss.stages), loss.chance_l1() == sum(s.chance_l1() for s in loss.stages)
(torch.Size([]), 2, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from vt_drloc.core.discover import LAYOUTS, PROBE_BATCH, ForwardRecord, GridReading, grid_readings, to_grid
from vt_drloc.core.errors import DrLocConfigError
from vt_drloc.core.loss import DrLocLoss

STAGE_CHOICES = ("last", "all")

__all__ = [
    "STAGE_CHOICES",
    "MultiScaleDrLocLoss",
    "StageCapture",
    "StageGrid",
    "check_stages",
    "find_stage_grids",
    "probe_stage_grids",
    "select_stages",
]


def check_stages(stages: Any) -> str | list[int]:
    """``stages`` as the config keeps it: ``"last"``, ``"all"`` or a list of distinct stage indices."""
    if isinstance(stages, str):
        if stages not in STAGE_CHOICES:
            raise DrLocConfigError(
                f"stages={stages!r} is not valid; choose 'last' (the final grid, the paper's DRLoc), 'all' (every "
                "stage of a hierarchical backbone) or a list of stage indices such as [-2, -1] (0 = the finest stage)"
            )
        return stages
    try:
        indices = list(stages)
    except TypeError:
        indices = None
    if (
        not indices
        or any(isinstance(i, bool) or not isinstance(i, int) for i in indices)
        or len(set(indices)) != len(indices)
    ):
        raise DrLocConfigError(
            f"stages={stages!r} must be 'last', 'all' or a non-empty list of distinct integer stage indices "
            "(0 = the finest stage, -1 = the final grid), e.g. [-2, -1]"
        )
    return [int(i) for i in indices]


@dataclass(frozen=True)
class StageGrid:
    """One earlier stage's grid: the input of ``module`` (dotted path in the probed root), read as ``reading``."""

    module: str
    reading: GridReading

    def describe(self) -> str:
        return f"input of {self.module!r}: {self.reading.describe()}"


def _readings(t: Tensor | None, input_hw: tuple[int, int], layouts: Sequence[str]) -> list[GridReading]:
    return [] if t is None else grid_readings(t, PROBE_BATCH, input_hw, None, layouts)


def find_stage_grids(
    record: ForwardRecord,
    input_hw: tuple[int, int],
    final_hw: tuple[int, int],
    *,
    layouts: Sequence[str],
    within: str = "",
    min_grid: int = 2,
) -> list[StageGrid]:
    """The stages before the final grid, finest first (see the module docstring). ``record`` must have been
    made with ``inputs=True``; ``final_hw``: the final grid's (H, W), whose stage is the final grid itself.
    Token grids of earlier stages are read with the fewest prefix tokens that leave a grid (none, in the
    hierarchical backbones this is for)."""
    outputs = {out.name: out for out in reversed(record.outputs)}  # each module's first call
    final_cells = final_hw[0] * final_hw[1]
    by_size: dict[tuple[int, int], StageGrid] = {}
    for entry in record.inputs:
        if not entry.after_block or not (not within or entry.name == within or entry.name.startswith(within + ".")):
            continue
        if record.in_block(entry.name):  # a reduction inside a block (PVT's attention `sr`) is not between stages
            continue
        out = outputs.get(entry.name)
        made = _readings(out.tensor if out is not None else None, input_hw, layouts)
        seen = _readings(entry.tensor, input_hw, layouts)
        if len(seen) > 1 and len(made) == 1:  # e.g. (B, 16, 16, 16): read the input as the step's output is laid out
            seen = [r for r in seen if r.layout == made[0].layout]
        if len(seen) != 1 or len(made) != 1 or min(seen[0].height, seen[0].width) < min_grid:
            continue  # not a grid, or one that reads two ways: not taken as a stage
        grid, coarser = seen[0], made[0]
        cells = grid.height * grid.width
        if coarser.height * coarser.width < cells and cells > final_cells:  # a downsampling step before the final grid
            by_size.setdefault((grid.height, grid.width), StageGrid(entry.name, grid))  # the outermost module
    return sorted(by_size.values(), key=lambda s: -s.reading.height * s.reading.width)


def select_stages(stages: str | list[int], earlier: Sequence[StageGrid], model_name: str) -> list[int]:
    """Indices into ``[*earlier, final]`` that ``stages`` names (sorted, finest first)."""
    count = len(earlier) + 1
    if stages == "last":
        return [count - 1]
    if stages == "all":
        return list(range(count))
    chosen: list[int] = []
    for index in cast(list[int], stages):
        if not -count <= index < count:
            listed = "; ".join(f"{i}: {s.describe()}" for i, s in enumerate(earlier))
            listed = (listed + "; " if listed else "") + f"{count - 1} (or -1): the final grid"
            raise DrLocConfigError(
                f"stages={list(stages)!r}: {model_name} has {count} stage(s) with a grid, so index {index} does not "
                f"exist. Its stages: {listed}."
            )
        chosen.append(index % count)
    if len(set(chosen)) != len(chosen):
        raise DrLocConfigError(f"stages={list(stages)!r} names one stage twice ({model_name} has {count} stage(s))")
    return sorted(chosen)


class MultiScaleDrLocLoss(nn.Module):
    """L_drloc summed over several grids, one :class:`~vt_drloc.core.DrLocLoss` (and head) per grid.

    Input contract: a sequence of (B, C_i, H_i, W_i) grids, in the order of ``specs``; each goes to its own
    loss (same options, own pooling). Returns the sum of the per-stage losses, as the released multi-scale
    Swin did; :meth:`stage_losses` gives them one by one.

    Args:
        specs: ``(channels, (H, W))`` of each grid, finest first.
        **loss_kwargs: the :class:`~vt_drloc.core.DrLocLoss` options shared by every stage.
    """

    def __init__(self, specs: Sequence[tuple[int, tuple[int, int]]], **loss_kwargs: Any):
        super().__init__()
        if len(specs) < 2:
            raise DrLocConfigError(f"MultiScaleDrLocLoss needs at least two grids, got {len(specs)}; use DrLocLoss")
        self.stages = nn.ModuleList(DrLocLoss(int(c), **loss_kwargs, grid_hw=(int(h), int(w))) for c, (h, w) in specs)
        self.mode, self.target = self.losses[0].mode, self.losses[0].target

    @property
    def losses(self) -> list[DrLocLoss]:
        """The per-stage losses, finest first (``self.stages`` typed)."""
        return [cast(DrLocLoss, stage) for stage in self.stages]

    @property
    def spec(self) -> tuple[tuple[int, tuple[int, int] | None], ...]:
        return tuple(spec for stage in self.losses for spec in stage.spec)

    @property
    def reduced_hws(self) -> list[tuple[int, int] | None]:
        return [stage.reduced_hw for stage in self.losses]

    def chance_l1(self) -> float | None:
        """The sum of the stages' chance L1 (the loss is their sum), or None outside ``mode="l1"``."""
        chances = [stage.chance_l1() for stage in self.losses]
        return None if any(c is None for c in chances) else float(sum(c for c in chances if c is not None))

    def stage_losses(self, grids: Sequence[Tensor], generator: torch.Generator | None = None) -> list[Tensor]:
        if len(grids) != len(self.stages):
            raise DrLocConfigError(f"MultiScaleDrLocLoss was built for {len(self.stages)} grids, got {len(grids)}")
        return [stage(grid, generator=generator) for stage, grid in zip(self.losses, grids)]

    def forward(self, grids: Sequence[Tensor], generator: torch.Generator | None = None) -> Tensor:
        return torch.stack(self.stage_losses(grids, generator)).sum()


class StageCapture:
    """Forward pre-hooks that keep the input of each earlier stage's module during a training forward.

    Only inputs that require grad are kept (the training forward; a no-grad validation forward leaves
    nothing), the first of each module per :meth:`start`.
    """

    def __init__(self) -> None:
        self.stages: list[tuple[nn.Module, StageGrid]] = []
        self._raw: dict[int, Tensor] = {}
        self._handles: list[Any] = []

    def attach(self, root: nn.Module, stages: Sequence[StageGrid]) -> None:
        self.detach()
        modules = dict(root.named_modules())
        for stage in stages:
            module = modules[stage.module]
            self.stages.append((module, stage))
            self._handles.append(module.register_forward_pre_hook(self._hook(len(self.stages) - 1)))

    def _hook(self, index: int) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple) -> None:
            if index not in self._raw and args and isinstance(args[0], Tensor) and args[0].requires_grad:
                self._raw[index] = args[0]

        return hook

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self.stages = [], []
        self._raw.clear()

    def start(self) -> None:
        """Forget the last forward's inputs (call before each training forward)."""
        self._raw.clear()

    def grids(self) -> list[Tensor] | None:
        """The (B, C, H, W) grid of each stage from the last forward, or None when a stage did not run."""
        if len(self._raw) != len(self.stages):
            return None
        grids = [to_grid(self._raw[i], stage.reading) for i, (_, stage) in enumerate(self.stages)]
        self._raw.clear()
        return grids


def probe_stage_grids(
    runner: nn.Module,
    x: Tensor,
    final_hw: tuple[int, int],
    stages: str | list[int],
    model_name: str,
    *,
    root: nn.Module | None = None,
    layouts: Sequence[str] = tuple(LAYOUTS),
    within: str = "",
    skip: Sequence[str] = (),
) -> tuple[list[StageGrid], bool]:
    """``(earlier stage grids, whether the final grid is a stage too)`` that ``stages`` selects, from one
    recorded no-grad forward of a zero batch shaped like ``x`` through ``runner`` in eval mode (modes restored).
    Module paths are relative to ``root`` (default: ``runner``); ``"last"`` runs nothing."""
    if stages == "last":
        return [], True
    root = runner if root is None else root
    probe = torch.zeros(PROBE_BATCH, *x.shape[1:], device=x.device, dtype=x.dtype)
    modes = [(module, module.training) for module in root.modules()]
    root.eval()
    try:
        record = ForwardRecord(root, runner, probe, skip=skip, inputs=True)
    finally:
        for module, mode in modes:
            module.training = mode
    earlier = find_stage_grids(record, (int(x.shape[-2]), int(x.shape[-1])), final_hw, layouts=layouts, within=within)
    picked = select_stages(stages, earlier, model_name)
    return [earlier[i] for i in picked if i < len(earlier)], len(earlier) in picked
