"""Building blocks shared by the CvT and T2T-ViT implementations.

Generic layers come from ``timm.layers`` (``Mlp``, ``Attention``, ``DropPath``, ``to_2tuple``)
and T2T-ViT's blocks are timm's ``vision_transformer.Block``; the init draws with
``torch.nn.init.trunc_normal_`` (timm's ``trunc_normal_`` draws differently, which would change
every seeded initialisation). What is here is specific to these two models: the attention base
the CvT's convolutional projections build on, a pre-norm block that passes the token map's shape
to its attention, the weight init and the timm classifier surface. All layers accept ``device`` /
``dtype`` factory arguments so a model can be built directly on the ``meta`` device (e.g. to count
parameters without allocating memory)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Attention, DropPath, Mlp, to_2tuple
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices  # private module, no public path (timm 1.0); read here only
from torch import Tensor, nn

__all__ = [
    "C32_CFG",
    "ClassifierMixin",
    "MultiHeadAttentionBase",
    "TransformerBlock",
    "build_model",
    "cfg_factory",
    "check_output_fmt",
    "conv_out_size",
    "init_weights",
    "sinusoid_table",
    "tokens_to_nchw",
    "check_no_pretrained",
]

IntOrPair = int | Sequence[int]


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial output size of a convolution / unfold with the given geometry."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"input of size {size} is too small for kernel={kernel}, stride={stride}, padding={padding}")
    return out


def tokens_to_nchw(x: Tensor, hw: tuple[int, int], num_prefix: int = 0) -> Tensor:
    """Tokens ``(B, num_prefix + H*W, C)`` -> map ``(B, C, H, W)`` (prefix tokens dropped)."""
    x = x[:, num_prefix:]
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], hw[0], hw[1])


def check_output_fmt(output_fmt: str) -> None:
    """``forward_intermediates`` supports NCHW feature maps and NLC token sequences."""
    if output_fmt not in ("NCHW", "NLC"):
        raise ValueError("output_fmt must be 'NCHW' or 'NLC'")


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


class MultiHeadAttentionBase(nn.Module):
    """Head geometry, fused SDPA and output projection (``proj`` / ``proj_drop``) of multi-head attention.

    Subclasses create their q / k / v projections, then call :meth:`_init_output`, and compute
    ``q, k, v`` of shape ``(B, heads, T, head_dim)`` before handing them to :meth:`_attend`.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads

    def _init_output(self, dim: int, attn_drop: float, proj_drop: float, **dd: Any) -> None:
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, shape: tuple[int, int, int]) -> Tensor:
        """Attention over heads, merged back to ``shape == (B, N, C)``, then the output projection."""
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(shape)
        return self.proj_drop(self.proj(x))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``.

    ``attn_layer`` is called as ``attn_layer(dim, num_heads, qkv_bias=..., attn_drop=..., proj_drop=...,
    device=..., dtype=...)`` (default: timm's ``Attention``); extra ``forward`` arguments
    are passed on to it.
    """

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
        attn_layer: Callable[..., nn.Module] = Attention,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.attn = attn_layer(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor, *attn_args: Any) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), *attn_args))
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


_SOURCE_KEYS = ("url", "file", "hf_hub_id", "state_dict")


def check_no_pretrained(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> None:
    """Raise a clear error for ``pretrained=True`` unless the caller supplied a weight source.

    No pretrained weights are published for these implementations. A local file can still be used
    via ``checkpoint_path=...`` (or ``pretrained_cfg_overlay=dict(file=...)`` with ``pretrained=True``).
    """
    if not pretrained:
        return
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    # timm.create_model("local-dir:<folder>", pretrained=True) passes the folder in pretrained_cfg (its "file")
    cfg = kwargs.get("pretrained_cfg")
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg if isinstance(cfg, dict) else {}
    if any(overlay.get(k) or cfg.get(k) for k in _SOURCE_KEYS):
        return
    raise RuntimeError(
        f"No pretrained weights are available for '{variant}' (vt_drloc's own CvT / T2T-ViT implementation). "
        f"Use pretrained=False, or load a state dict saved from this model with "
        f"timm.create_model('{variant}', checkpoint_path='path/to/weights.pth')."
    )


# ---------------------------------------------------------------------- timm model surface
_GLOBAL_POOLS = ("", "token", "avg")


class ClassifierMixin:
    """timm classifier surface shared by the CvT and T2T-ViT models.

    The model sets ``num_prefix_tokens`` (class token first when 1) and calls
    :meth:`_init_classifier_surface` early in ``__init__``, builds its trunk, then calls
    :meth:`_init_head` (creates ``norm``, ``head_drop`` and ``head``); ``forward_features`` returns
    the final-norm tokens ``(B, num_prefix_tokens + H*W, C)``.
    """

    num_prefix_tokens: int
    num_features: int
    norm: nn.Module
    head_drop: nn.Module
    head: nn.Module

    def _check_global_pool(self, global_pool: str, has_class_token: bool) -> None:
        if global_pool not in _GLOBAL_POOLS:
            raise ValueError(f"global_pool must be '', 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not has_class_token:
            raise ValueError("global_pool='token' needs a class token (class_token=True)")

    def _init_classifier_surface(
        self,
        img_size: int | tuple[int, int],
        in_chans: int,
        num_classes: int,
        global_pool: str,
        num_features: int,
        num_prefix_tokens: int,
        drop_path_rate: float,
    ) -> None:
        self._check_global_pool(global_pool, num_prefix_tokens > 0)
        self.img_size = to_2tuple(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_path_rate = drop_path_rate
        self.num_prefix_tokens = num_prefix_tokens
        self.num_features = self.head_hidden_size = self.embed_dim = num_features
        self.grad_checkpointing = False

    def _init_head(self, drop_rate: float, **dd: Any) -> None:
        self.norm = nn.LayerNorm(self.num_features, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, self.num_classes, **dd) if self.num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self._check_global_pool(global_pool, self.num_prefix_tokens > 0)
            self.global_pool = global_pool
        ref = self.norm.weight if isinstance(self.norm, nn.LayerNorm) else next(self.parameters(), None)  # type: ignore[attr-defined]
        dd = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear) and not self.head.weight.is_meta:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def _prune_trunk(self, name: str, indices: int | list[int], prune_norm: bool, prune_head: bool) -> list[int]:
        """``prune_intermediate_layers`` over the ``nn.ModuleList`` attribute ``name`` (stages / blocks)."""
        trunk = getattr(self, name)
        take_indices, max_index = feature_take_indices(len(trunk), indices)
        setattr(self, name, trunk[: max_index + 1])
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))  # type: ignore[attr-defined]


_DEFAULT_CFG: dict[str, Any] = {
    "url": "",
    "num_classes": 1000,
    "input_size": (3, 224, 224),
    "pool_size": None,
    "crop_pct": 0.875,
    "interpolation": "bicubic",
    "fixed_input_size": True,
    "mean": IMAGENET_DEFAULT_MEAN,
    "std": IMAGENET_DEFAULT_STD,
    "first_conv": None,
    "classifier": "head",
}

# Overrides for the native 32-px (``*_c32``) variants.
C32_CFG: dict[str, Any] = dict(input_size=(3, 32, 32), crop_pct=1.0)


def cfg_factory(**family: Any) -> Callable[..., dict[str, Any]]:
    """A timm-style ``_cfg(**overrides)`` for one model family: common defaults < ``family`` < per model."""

    def _cfg(**kwargs: Any) -> dict[str, Any]:
        return {**_DEFAULT_CFG, **family, **kwargs}

    return _cfg


def build_model(model_cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any) -> Any:
    """``build_model_with_cfg`` with the pretrained check and a ``getter`` feature wrapper."""
    check_no_pretrained(variant, pretrained, kwargs)
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )
