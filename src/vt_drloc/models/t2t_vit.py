"""T2T-ViT: Tokens-to-Token Vision Transformer, registered with timm.

Yuan et al., "Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet",
ICCV 2021 (arXiv:2101.11986). Implemented for vt_drloc from the paper's description.

Architecture (T2T-ViT-14)
-------------------------
*Tokens-to-token module* (``patch_embed``): a soft split (overlapping ``unfold``) with kernel 7,
stride 4, padding 2 turns the image into tokens of width ``3*7*7 = 147``; then two rounds of
(token transformer layer -> re-structurization to a 2-D map -> soft split with kernel 3, stride 2,
padding 1). The token layers project to width ``token_dim = 64``. A linear layer maps the last
soft split (``64*3*3 = 576``) to the backbone width. At 224 px this gives 56x56 -> 28x28 ->
**14x14** tokens (``grid_size``).

*Backbone*: class token + fixed sinusoidal position embedding (a non-learned buffer, not in the
state dict), 14 pre-norm transformer blocks of width 384, 6 heads, MLP ratio 3, no qkv bias,
final LayerNorm, linear classifier on the class token (``global_pool='token'``; ``'avg'`` averages
the patch tokens).

Token layer ("T2T attention"), ``t2t_attn``:

* ``'performer'`` — **the default**, as in the paper's T2T-ViT-14: a single-head Performer
  (FAVOR+ positive orthogonal random features, ``m = 0.5 * 64 = 32`` features) replaces
  softmax attention, so the 3136-token first layer costs linear time. The random feature matrix
  is drawn once at construction and stored as a buffer (it is saved in state dicts, so a
  checkpoint reproduces the model exactly). Kernel features are computed in float32 even under
  autocast; with rows of norm ``sqrt(64)`` the exponent is bounded by 32, so they cannot overflow.
* ``'transformer'`` — single-head softmax attention, MLP ratio 1 (the paper's T2T-ViT_t-14),
  registered as ``t2t_vit_t_14``.

The token layers project the input width ``d_in`` to 64, so their attention residual adds the
value projection: ``y = v + proj(attn)``, then ``y + MLP(LN(y))``.

T2T-ViT-14 has 21.47 M parameters (1000 classes; 21.55 M if the 197x384 position table were
counted). Stochastic depth rises linearly over the 14 backbone blocks (none in the T2T module).

32-px variants (``*_c32``)
--------------------------
The paper trains small datasets at 224 px (images upsampled). For native 32-px inputs the
``*_c32`` variants change only the first soft split: kernel 7, **stride 1**, padding 3, so the
soft-split strides are 1 / 2 / 2 (total 4) and a 32x32 image gives 32x32 -> 16x16 -> **8x8**
tokens (64 patch tokens + class token). Parameter count is unchanged. Other geometries:
``timm.create_model('t2t_vit_14', img_size=..., t2t_strides=(s1, s2, s3), t2t_paddings=...)``.

The position table fixes the input size to ``img_size`` (a mismatching input raises).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import Mlp, calculate_drop_path_rates, to_2tuple
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from vt_drloc.models._layers import (  # feature_take_indices: timm's, read from a private module there
    C32_CFG,
    ClassifierMixin,
    build_model,
    cfg_factory,
    check_output_fmt,
    conv_out_size,
    feature_take_indices,
    init_weights,
    sinusoid_table,
    tokens_to_nchw,
)

__all__ = ["T2TViT", "T2TModule", "TokenPerformer", "TokenTransformer"]


class _TokenLayer(nn.Module):
    """Single-head token layer mapping width ``dim`` to ``out_dim``: ``y = v + proj(attention(q, k, v))``
    on ``LN(x)``, then ``y + MLP(LN(y))``. Subclasses define :meth:`attention`."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        mlp_ratio: float = 1.0,
        qkv_bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.out_dim = out_dim
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.qkv = nn.Linear(dim, 3 * out_dim, bias=qkv_bias, **dd)
        self.proj = nn.Linear(out_dim, out_dim, **dd)
        self.norm2 = nn.LayerNorm(out_dim, **dd)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio), **dd)

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(self.norm1(x)).split(self.out_dim, dim=-1)
        x = v + self.proj(self.attention(q, k, v))
        return x + self.mlp(self.norm2(x))


class TokenTransformer(_TokenLayer):
    """Single-head softmax-attention token layer mapping width ``dim`` to ``out_dim``."""

    def __init__(self, dim: int, out_dim: int, mlp_ratio: float = 1.0, device: Any = None, dtype: Any = None) -> None:
        super().__init__(dim, out_dim, mlp_ratio, qkv_bias=False, device=device, dtype=dtype)

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)


class TokenPerformer(_TokenLayer):
    """Single-head Performer (FAVOR+) token layer mapping width ``dim`` to ``out_dim``.

    Softmax kernel ``exp(q.k)`` approximated by positive random features
    ``phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)`` with ``m = kernel_ratio * out_dim`` orthogonal rows
    of ``W`` (each of norm ``sqrt(out_dim)``). Attention is
    ``phi(Q) (phi(K)^T V) / (phi(Q) sum_t phi(k_t))``, linear in the number of tokens.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        kernel_ratio: float = 0.5,
        mlp_ratio: float = 1.0,
        eps: float = 1e-8,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(dim, out_dim, mlp_ratio, qkv_bias=True, device=device, dtype=dtype)
        self.num_features_rf = max(1, int(out_dim * kernel_ratio))
        self.eps = eps
        self.register_buffer(
            "random_features", torch.empty(self.num_features_rf, out_dim, device=device, dtype=torch.float32)
        )
        self.reset_random_features()

    @torch.no_grad()
    def reset_random_features(self) -> None:
        """Draw fresh orthogonal random features (rows of norm ``sqrt(out_dim)``)."""
        w = self.random_features
        if w.is_meta:
            return
        m, d = w.shape
        blocks, done = [], 0
        while done < m:  # stack blocks of orthonormal rows (one block suffices when m <= d)
            q, _ = torch.linalg.qr(torch.randn(d, d, device=w.device, dtype=torch.float32))
            blocks.append(q.T[: m - done])
            done += blocks[-1].shape[0]
        w.copy_(torch.cat(blocks) * math.sqrt(d))

    def _phi(self, x: Tensor) -> Tensor:
        proj = x @ self.random_features.float().T
        return torch.exp(proj - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(self.num_features_rf)

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out_dtype = v.dtype
        with torch.autocast(device_type=v.device.type, enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            qp, kp = self._phi(q), self._phi(k)  # (B, T, m)
            kv = kp.transpose(1, 2) @ v  # (B, m, out_dim)
            denom = qp @ kp.sum(dim=1).unsqueeze(-1)  # (B, T, 1)
            y = (qp @ kv) / (denom + self.eps)
        return y.to(out_dtype)


class T2TModule(nn.Module):
    """Tokens-to-token embedding: soft split, then ``len(kernels) - 1`` rounds of
    (token layer, re-structurization, soft split), then a linear projection to ``embed_dim``.

    Input ``(B, C, H, W)`` -> tokens ``(B, grid_h * grid_w, embed_dim)``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        embed_dim: int = 384,
        token_dim: int = 64,
        t2t_attn: str = "performer",
        kernels: Sequence[int] = (7, 3, 3),
        strides: Sequence[int] = (4, 2, 2),
        paddings: Sequence[int] = (2, 1, 1),
        kernel_ratio: float = 0.5,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if t2t_attn not in ("performer", "transformer"):
            raise ValueError(f"t2t_attn must be 'performer' or 'transformer', got {t2t_attn!r}")
        if not (len(kernels) == len(strides) == len(paddings)) or len(kernels) < 1:
            raise ValueError("t2t kernels, strides and paddings must be non-empty and of equal length")
        dd = {"device": device, "dtype": dtype}
        self.img_size = to_2tuple(img_size)
        self.t2t_attn = t2t_attn
        self.soft_splits = nn.ModuleList(
            nn.Unfold(kernel_size=k, stride=s, padding=p) for k, s, p in zip(kernels, strides, paddings)
        )
        layers = []
        width = in_chans * kernels[0] ** 2
        for k in kernels[1:]:
            if t2t_attn == "performer":
                layers.append(TokenPerformer(width, token_dim, kernel_ratio=kernel_ratio, **dd))
            else:
                layers.append(TokenTransformer(width, token_dim, mlp_ratio=1.0, **dd))
            width = token_dim * k**2
        self.token_layers = nn.ModuleList(layers)
        self.proj = nn.Linear(width, embed_dim, **dd)

        self.grid_sizes: list[tuple[int, int]] = []
        hw = self.img_size
        for k, s, p in zip(kernels, strides, paddings):
            hw = (conv_out_size(hw[0], k, s, p), conv_out_size(hw[1], k, s, p))
            self.grid_sizes.append(hw)
        self.grid_size: tuple[int, int] = hw
        self.num_patches = hw[0] * hw[1]
        self.reduction = math.prod(strides)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"T2T-ViT was built for {self.img_size[0]}x{self.img_size[1]} inputs (fixed sinusoidal position "
                f"table), got {x.shape[-2]}x{x.shape[-1]}; create the model with img_size={tuple(x.shape[-2:])}"
            )
        x = self.soft_splits[0](x).transpose(1, 2)
        for layer, split, hw in zip(self.token_layers, self.soft_splits[1:], self.grid_sizes):
            x = layer(x)
            x = tokens_to_nchw(x, hw)  # re-structurization
            x = split(x).transpose(1, 2)
        return self.proj(x)


class T2TViT(ClassifierMixin, nn.Module):
    """Tokens-to-Token ViT with timm's model interface (see module docstring)."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        t2t_attn: str = "performer",
        token_dim: int = 64,
        t2t_kernels: Sequence[int] = (7, 3, 3),
        t2t_strides: Sequence[int] = (4, 2, 2),
        t2t_paddings: Sequence[int] = (2, 1, 1),
        kernel_ratio: float = 0.5,
        embed_dim: int = 384,
        depth: int = 14,
        num_heads: int = 6,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = False,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self._init_classifier_surface(img_size, in_chans, num_classes, global_pool, embed_dim, 1, drop_path_rate)
        dd = {"device": device, "dtype": dtype}

        self.patch_embed = T2TModule(
            self.img_size,
            in_chans,
            embed_dim,
            token_dim,
            t2t_attn,
            t2t_kernels,
            t2t_strides,
            t2t_paddings,
            kernel_ratio,
            **dd,
        )
        self.grid_size: tuple[int, int] = self.patch_embed.grid_size
        self.patch_size = self.patch_embed.reduction  # total stride of the token grid
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        is_meta = device is not None and torch.device(device).type == "meta"
        table = (
            torch.empty(1, num_patches + 1, embed_dim, **dd) if is_meta else sinusoid_table(num_patches + 1, embed_dim)
        )
        self.register_buffer("pos_embed", table.to(**dd), persistent=False)  # fixed, not learned, not saved
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                **dd,
            )
            for i in range(depth)
        )
        self._init_head(drop_rate, **dd)
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=self.patch_size) for i in range(depth)
        ]

        init_weights(self)
        if not self.cls_token.is_meta:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    # ------------------------------------------------------------------ timm interface
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^cls_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _embed(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed.to(x.dtype))

    def _run_block(self, blk: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Backbone block outputs as feature maps (class token removed).

        Args:
            x: input images ``(B, C, H, W)``.
            indices: take the last ``n`` blocks if int, all if None, else the listed block indices.
            norm: apply the final norm to every intermediate.
            stop_early: stop after the last requested block (only with ``intermediates_only``).
            output_fmt: ``'NCHW'`` maps or ``'NLC'`` token sequences.
            intermediates_only: return only the list of intermediates.

        Returns:
            ``intermediates`` or ``(forward_features(x), intermediates)``.
        """
        check_output_fmt(output_fmt)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks[: max_index + 1] if (stop_early and intermediates_only) else self.blocks
        x = self._embed(x)
        intermediates: list[Tensor] = []
        prefix = self.num_prefix_tokens
        for i, blk in enumerate(blocks):
            x = self._run_block(blk, x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                intermediates.append(
                    tokens_to_nchw(y, self.grid_size, prefix) if output_fmt == "NCHW" else y[:, prefix:]
                )
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop blocks after the last requested one (and optionally the norm / head)."""
        return self._prune_trunk("blocks", indices, prune_norm, prune_head)

    def forward_features(self, x: Tensor) -> Tensor:
        """Final tokens ``(B, 1 + H*W, C)`` after the final LayerNorm."""
        x = self._embed(x)
        for blk in self.blocks:
            x = self._run_block(blk, x)
        return self.norm(x)


# ---------------------------------------------------------------------- registration
_cfg = cfg_factory(
    crop_pct=0.9,
    license="bsd-3-clause-clear",
    paper_ids="arXiv:2101.11986",
    paper_name="Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet",
)

default_cfgs = generate_default_cfgs(
    {
        "t2t_vit_14": _cfg(),
        "t2t_vit_t_14": _cfg(),
        "t2t_vit_14_c32": _cfg(**C32_CFG),
        "t2t_vit_t_14_c32": _cfg(**C32_CFG),
    }
)

# 32-px soft splits: first 7x7 with stride 1 (padding 3); the two 3x3 / stride-2 splits unchanged.
C32_T2T = dict(t2t_kernels=(7, 3, 3), t2t_strides=(1, 2, 2), t2t_paddings=(3, 1, 1))
_T2T_14 = dict(token_dim=64, embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0)


def _create_t2t_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> T2TViT:
    return build_model(T2TViT, variant, pretrained, **kwargs)


@register_model
def t2t_vit_14(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-14 (Performer T2T module), 224 px, final grid 14x14, ~21.5 M params."""
    return _create_t2t_vit("t2t_vit_14", pretrained, **dict(_T2T_14, t2t_attn="performer", **kwargs))


@register_model
def t2t_vit_t_14(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT_t-14 (softmax-transformer T2T module), 224 px, final grid 14x14, ~21.5 M params."""
    return _create_t2t_vit("t2t_vit_t_14", pretrained, **dict(_T2T_14, t2t_attn="transformer", **kwargs))


@register_model
def t2t_vit_14_c32(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-14 (Performer) for 32-px inputs: soft-split strides 1/2/2, final grid 8x8 at 32 px."""
    args = dict(_T2T_14, t2t_attn="performer", **C32_T2T)
    return _create_t2t_vit("t2t_vit_14_c32", pretrained, **dict(args, **kwargs))


@register_model
def t2t_vit_t_14_c32(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT_t-14 (transformer) for 32-px inputs: soft-split strides 1/2/2, final grid 8x8 at 32 px."""
    args = dict(_T2T_14, t2t_attn="transformer", **C32_T2T)
    return _create_t2t_vit("t2t_vit_t_14_c32", pretrained, **dict(args, **kwargs))
