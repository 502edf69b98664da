"""The DRLoc head: the small MLP that predicts the offset of a pair of cells from their embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vt_drloc.core.errors import DrLocConfigError, check_choice

# "released": every Linear trunc-normal (std 0.02) with zero bias, as the released models' own
# init re-initialises the head; "torch": PyTorch's default Linear init.
HEAD_INITS = ("released", "torch")


# Output of the ce / cbr head. "released": one more Linear(w, w) without activation, then a
# separate Linear(w, n) per axis; "fused": a single Linear(w, 2n) (same function class, fewer weights).
CLASS_HEADS = ("released", "fused")


HEAD_PRESETS: dict[str, tuple[int, ...]] = {"released": (512, 512), "paper": (512,)}


def resolve_hidden_dims(hidden_dims: Sequence[int] | str) -> tuple[int, ...]:
    """Turn a preset name (``"released"``, ``"paper"``) or a sequence of widths into a tuple."""
    if isinstance(hidden_dims, str):
        if hidden_dims not in HEAD_PRESETS:
            raise DrLocConfigError(
                f"hidden_dims={hidden_dims!r} is not a preset; use one of {sorted(HEAD_PRESETS)} "
                "or a list of layer widths such as [512, 512]"
            )
        return HEAD_PRESETS[hidden_dims]
    dims = tuple(int(d) for d in hidden_dims)
    if any(d < 1 for d in dims):
        raise DrLocConfigError(f"hidden_dims={list(dims)} must hold positive layer widths")
    return dims


class DrLocHead(nn.Module):
    """MLP that predicts the 2-D offset between two cell embeddings from their concatenation.

    Args:
        in_dim: channels C of one cell embedding; the MLP's input is 2C.
        hidden_dims: hidden layer widths (ReLU after each) or a preset name from
            :data:`HEAD_PRESETS`: ``"released"`` = (512, 512), ``"paper"`` = (512,).
        num_classes: ``None`` for regression (output (..., 2)); otherwise the number of offset
            classes per axis (output (..., 2, num_classes)) for the ``ce`` and ``cbr`` modes.
        init: ``"released"`` (default): every Linear truncated-normal with std 0.02 and zero bias,
            as the released models' weight init re-initialises the head; ``"torch"``: PyTorch's
            default Linear init.
        class_head: output layers for ``num_classes`` (see :data:`CLASS_HEADS`): ``"released"``
            adds Linear(w, w) without activation, then one Linear(w, n) per axis (``axis_heads``);
            ``"fused"`` is one Linear(w, 2n).

    >>> head = DrLocHead(64)
    >>> head(torch.randn(8, 64, 128)).shape
    torch.Size([8, 64, 2])
    >>> DrLocHead(64, num_classes=7)(torch.randn(8, 64, 128)).shape
    torch.Size([8, 64, 2, 7])
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int] | str = "released",
        num_classes: int | None = None,
        init: str = "released",
        class_head: str = "released",
    ):
        super().__init__()
        if in_dim < 1:
            raise DrLocConfigError(f"in_dim={in_dim} must be >= 1")
        if num_classes is not None and num_classes < 2:
            raise DrLocConfigError(f"num_classes={num_classes} must be >= 2 (or None for regression)")
        check_choice("init", init, HEAD_INITS)
        check_choice("class_head", class_head, CLASS_HEADS)
        self.in_dim = in_dim
        self.hidden_dims = resolve_hidden_dims(hidden_dims)
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        width = 2 * in_dim
        for hidden in self.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        per_axis = num_classes is not None and class_head == "released"
        if per_axis:
            layers.append(nn.Linear(width, width))  # no activation after it, as released
        else:
            # one linear layer for both axes (regression: the two offsets; "fused": both classifiers)
            layers.append(nn.Linear(width, 2 * (num_classes or 1)))
        self.mlp = nn.Sequential(*layers)
        self.axis_heads = (
            nn.ModuleList(nn.Linear(width, num_classes) for _ in range(2))
            if num_classes is not None and per_axis
            else None
        )
        if init == "released":
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)

    def forward(self, pairs: Tensor) -> Tensor:
        out = self.mlp(pairs)
        if self.num_classes is None:
            return out
        if self.axis_heads is not None:
            return torch.stack([head(out) for head in self.axis_heads], dim=-2)
        return out.unflatten(-1, (2, self.num_classes))
