"""Building blocks shared by the CvT and T2T-ViT implementations.

Everything here is written for this package (no third-party model code); only timm's generic
``DropPath`` is reused. All layers accept ``device`` / ``dtype`` factory arguments so a model can be
built directly on the ``meta`` device (e.g. to count parameters without allocating memory).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

__all__ = [
    "Mlp",
    "MultiHeadSelfAttention",
    "TransformerBlock",
    "conv_out_size",
    "init_weights",
    "linear_drop_path_rates",
    "sinusoid_table",
    "to_2tuple",
    "check_no_pretrained",
]

IntOrPair = Union[int, Sequence[int]]


def to_2tuple(x: IntOrPair) -> Tuple[int, int]:
    """``224`` -> ``(224, 224)``; a 2-sequence is returned as a tuple of ints."""
    if isinstance(x, int):
        return (x, x)
    x = tuple(int(v) for v in x)
    if len(x) != 2:
        raise ValueError(f"expected an int or an (H, W) pair, got {x}")
    return x  # type: ignore[return-value]


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial output size of a convolution / unfold with the given geometry."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"input of size {size} is too small for kernel={kernel}, stride={stride}, padding={padding}")
    return out


def sinusoid_table(length: int, dim: int) -> Tensor:
    """Fixed sinusoidal position encoding (Vaswani et al. 2017) of shape ``(1, length, dim)``.

    Channel ``2i`` holds ``sin(pos / 10000^(2i/dim))`` and channel ``2i+1`` the matching cosine.
    """
    pos = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    two_i = torch.arange(0, dim, 2, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, two_i / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return table.float().unsqueeze(0)


class Mlp(nn.Module):
    """Two-layer position-wise feed-forward network (Linear, GELU, Linear)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        drop: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, **dd)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class MultiHeadSelfAttention(nn.Module):
    """Plain multi-head self-attention over tokens ``(B, N, C)`` (fused SDPA kernel)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        dd = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: ``x + MSA(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


def init_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) linear weights, zero biases, unit/zero norm affine parameters.

    Convolutions keep PyTorch's default (Kaiming-uniform) initialisation. Tensors on the ``meta``
    device are skipped (nothing to initialise).
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            if m.weight.is_meta:
                continue
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            if m.weight is not None and not m.weight.is_meta:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def linear_drop_path_rates(drop_path_rate: float, depths: Iterable[int]) -> list:
    """Stochastic-depth rates rising linearly from 0 to ``drop_path_rate`` over all blocks, split per stage."""
    depths = list(depths)
    total = sum(depths)
    rates = torch.linspace(0, drop_path_rate, total).tolist() if total else []
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


_SOURCE_KEYS = ("url", "file", "hf_hub_id", "state_dict")


def check_no_pretrained(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> None:
    """Raise a clear error for ``pretrained=True`` unless the caller supplied a weight source.

    No pretrained weights are published for these implementations. A local file can still be used
    via ``checkpoint_path=...`` (or ``pretrained_cfg_overlay=dict(file=...)`` with ``pretrained=True``).
    """
    if not pretrained:
        return
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if any(overlay.get(k) for k in _SOURCE_KEYS):
        return
    raise RuntimeError(
        f"No pretrained weights are available for '{variant}' (vt_drloc's own CvT / T2T-ViT implementation). "
        f"Use pretrained=False, or load a state dict saved from this model with "
        f"timm.create_model('{variant}', checkpoint_path='path/to/weights.pth')."
    )

