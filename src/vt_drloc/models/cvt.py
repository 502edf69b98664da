"""CvT: Convolutional vision Transformer, registered with timm.

Wu et al., "CvT: Introducing Convolutions to Vision Transformers", ICCV 2021 (arXiv:2103.15808).
Implemented for vt_drloc from the paper's description.

Architecture (CvT-13 / CvT-21)
------------------------------
Three stages. Each stage starts with a *convolutional token embedding*: a strided ``Conv2d`` over
the previous stage's 2-D token map followed by LayerNorm over channels. Stage geometry
(kernel / stride / padding) is 7/4/2, 3/2/1, 3/2/1; widths 64 / 192 / 384; heads 1 / 3 / 6;
depths 1 / 2 / 10 (CvT-13) or 1 / 4 / 16 (CvT-21); MLP ratio 4. Blocks are pre-norm transformer
blocks whose attention uses a *convolutional projection*: queries, keys and values each go
through a depth-wise 3x3 convolution + BatchNorm (stride 1 for queries, stride 2 for keys and
values) and then a linear (point-wise) projection with bias. There is no position embedding.
A class token is added in the last stage only; it bypasses the convolutional projection (it is
concatenated to q / k / v after it). The classifier reads the final-norm class token
(``global_pool='token'``; ``'avg'`` averages the patch tokens instead).

At 224 px the stages see 56x56, 28x28 and 14x14 token maps; ``forward_features`` returns
``(B, 1 + 196, 384)`` and ``grid_size == (14, 14)``. CvT-13 has 19.98 M parameters
(1000 classes) and about 4.5 GMACs at 224 px.

Differences from the authors' release, on purpose: attention logits are scaled by
``head_dim ** -0.5`` (the usual convention), and stochastic depth rises linearly over all blocks
of the network rather than per stage.

The DRLoc release's CvT-13 (``cvt_13_drloc``)
---------------------------------------------
The DRLoc authors' released runs (Liu et al. 2021) trained a different CvT-13: no class token at
all, the classifier reads the average of the last stage's 14x14 map with no final norm before it
(so it sees the same map the DRLoc head sees, before pooling), keys and values share one
depth-wise conv + BatchNorm (``shared_kv_conv=True``) before their point-wise projections, none of
the q / k / v projections has a bias, the first embedding pads by 3, and there is no stochastic
depth. ``cvt_13_drloc`` builds it: 19,936,296 parameters with 1000 classes (``cvt_13``:
19,997,480), 19,555,146 with 10. Not reproduced: its channel LayerNorm adds eps to the standard
deviation rather than the variance (a 1e-5 difference), and its linear layers keep PyTorch's
default initialisation (here: truncated normal, std 0.02, as ``cvt_13``).

32-px variants (``*_c32``)
--------------------------
The paper trains small datasets at 224 px (images upsampled). For native 32-px inputs the
``*_c32`` variants change only the first embedding: kernel 7, **stride 1**, padding 3, so the
stage strides are 1 / 2 / 2 (total 4) and a 32x32 image gives 32x32, 16x16 and finally an
**8x8** token grid (keys / values of the last stage on a 4x4 map). Parameters are identical to
the 224-px model (there is no position embedding). Any stride tuple can be passed with
``timm.create_model('cvt_13', img_size=..., patch_strides=(s1, s2, s3), patch_paddings=...)``.

Every model accepts inputs of any size (no position embedding); ``grid_size`` is the final grid
for the configured ``img_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.utils.checkpoint
from timm.layers import calculate_drop_path_rates
from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn

from vt_drloc.models._layers import (  # feature_take_indices: timm's, read from a private module there
    C32_CFG,
    ClassifierMixin,
    MultiHeadAttentionBase,
    TransformerBlock,
    build_model,
    cfg_factory,
    check_output_fmt,
    conv_out_size,
    feature_take_indices,
    init_weights,
    tokens_to_nchw,
)

__all__ = ["CvT"]


class ConvEmbed(nn.Module):
    """Convolutional token embedding: strided conv over an NCHW map, then LayerNorm on channels."""

    def __init__(
        self, in_chs: int, dim: int, kernel: int, stride: int, padding: int, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.proj = nn.Conv2d(in_chs, dim, kernel_size=kernel, stride=stride, padding=padding, **dd)
        self.norm = nn.LayerNorm(dim, **dd)

    def out_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        return tuple(conv_out_size(s, self.kernel, self.stride, self.padding) for s in hw)  # type: ignore[return-value]

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)
        hw = (x.shape[-2], x.shape[-1])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class DepthwiseConvBN(nn.Module):
    """Depth-wise ``k x k`` convolution (no bias) + BatchNorm; the spatial half of a conv projection."""

    def __init__(self, dim: int, kernel: int, stride: int, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(dim, dim, kernel, stride=stride, padding=kernel // 2, groups=dim, bias=False, **dd)
        self.bn = nn.BatchNorm2d(dim, **dd)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)).flatten(2).transpose(1, 2)


class ConvProjectionAttention(MultiHeadAttentionBase):
    """Multi-head attention whose q / k / v come from depth-wise conv + BN + linear projections.

    Prefix (class) tokens skip the convolution and are prepended to q, k and v.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        kernel: int = 3,
        q_stride: int = 1,
        kv_stride: int = 2,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        shared_kv_conv: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(dim, num_heads)
        dd = {"device": device, "dtype": dtype}
        self.conv_q = DepthwiseConvBN(dim, kernel, q_stride, **dd)
        if shared_kv_conv:
            # one depth-wise conv + BN feeds both the key and the value projections
            self.conv_kv = DepthwiseConvBN(dim, kernel, kv_stride, **dd)
        else:
            self.conv_k = DepthwiseConvBN(dim, kernel, kv_stride, **dd)
            self.conv_v = DepthwiseConvBN(dim, kernel, kv_stride, **dd)
        self.shared_kv_conv = shared_kv_conv
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.k = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.v = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self._init_output(dim, attn_drop, proj_drop, **dd)

    def _heads(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        return x.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, hw: tuple[int, int], num_prefix: int) -> Tensor:
        B, N, C = x.shape
        prefix, tokens = x[:, :num_prefix], x[:, num_prefix:]
        grid = tokens_to_nchw(tokens, hw)
        q = self.conv_q(grid)
        if self.shared_kv_conv:
            k = v = self.conv_kv(grid)
        else:
            k, v = self.conv_k(grid), self.conv_v(grid)
        if num_prefix:
            q, k, v = (torch.cat([prefix, t], dim=1) for t in (q, k, v))
        q, k, v = self._heads(self.q(q)), self._heads(self.k(k)), self._heads(self.v(v))
        return self._attend(q, k, v, (B, N, C))


class ConvTransformerBlock(TransformerBlock):
    """Pre-norm block: ``x + ConvProjAttn(LN(x))``, ``x + MLP(LN(x))`` with stochastic depth.

    ``forward(x, hw, num_prefix)``: the token grid ``hw`` and prefix count go to the attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        kernel: int = 3,
        kv_stride: int = 2,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        shared_kv_conv: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        attn_layer = partial(
            ConvProjectionAttention, kernel=kernel, q_stride=1, kv_stride=kv_stride, shared_kv_conv=shared_kv_conv
        )
        super().__init__(
            dim,
            num_heads,
            mlp_ratio,
            qkv_bias,
            proj_drop,
            attn_drop,
            drop_path,
            device=device,
            dtype=dtype,
            attn_layer=attn_layer,
        )


class CvTStage(nn.Module):
    """Conv token embedding, optional class token, then ``depth`` conv-projection blocks.

    ``forward`` takes an NCHW map and returns tokens ``(B, prefix + H*W, C)`` and ``(H, W)``.
    """

    def __init__(
        self,
        in_chs: int,
        dim: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        patch_stride: int,
        patch_padding: int,
        class_token: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_kernel: int = 3,
        kv_stride: int = 2,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        shared_kv_conv: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.patch_embed = ConvEmbed(in_chs, dim, patch_size, patch_stride, patch_padding, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, **dd)) if class_token else None
        self.num_prefix_tokens = 1 if class_token else 0
        dpr = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList(
            ConvTransformerBlock(
                dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                proj_kernel,
                kv_stride,
                proj_drop,
                attn_drop,
                dpr[i],
                shared_kv_conv,
                **dd,
            )
            for i in range(depth)
        )
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x, hw = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, hw, self.num_prefix_tokens, use_reentrant=False)
            else:
                x = blk(x, hw, self.num_prefix_tokens)
        return x, hw


class CvT(ClassifierMixin, nn.Module):
    """Convolutional vision Transformer with timm's model interface (see module docstring)."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dims: Sequence[int] = (64, 192, 384),
        depths: Sequence[int] = (1, 2, 10),
        num_heads: Sequence[int] = (1, 3, 6),
        patch_sizes: Sequence[int] = (7, 3, 3),
        patch_strides: Sequence[int] = (4, 2, 2),
        patch_paddings: Sequence[int] = (2, 1, 1),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_kernel: int = 3,
        kv_stride: int = 2,
        class_token: bool = True,
        final_norm: bool = True,
        shared_kv_conv: bool = False,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        n = len(embed_dims)
        self._init_classifier_surface(
            img_size, in_chans, num_classes, global_pool, embed_dims[-1], 1 if class_token else 0, drop_path_rate
        )
        if not all(len(s) == n for s in (depths, num_heads, patch_sizes, patch_strides, patch_paddings)):
            raise ValueError("embed_dims, depths, num_heads and the patch_* tuples must have the same length")
        dd = {"device": device, "dtype": dtype}

        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages: list[CvTStage] = []
        self.feature_info: list[dict[str, Any]] = []
        in_chs, reduction, hw = in_chans, 1, self.img_size
        for i in range(n):
            stages.append(
                CvTStage(
                    in_chs,
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    patch_sizes[i],
                    patch_strides[i],
                    patch_paddings[i],
                    class_token=class_token and i == n - 1,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_kernel=proj_kernel,
                    kv_stride=kv_stride,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[i],
                    shared_kv_conv=shared_kv_conv,
                    **dd,
                )
            )
            hw = stages[-1].patch_embed.out_size(hw)
            reduction *= patch_strides[i]
            in_chs = embed_dims[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.ModuleList(stages)
        self.grid_size: tuple[int, int] = hw
        self.patch_size = reduction  # total stride of the final token grid

        self._init_head(drop_rate, **dd)
        if not final_norm:
            self.norm = nn.Identity()  # the classifier (and a post-norm DRLoc tap) read the raw last stage

        init_weights(self)
        last = self.stages[-1]
        if last.cls_token is not None and not last.cls_token.is_meta:
            nn.init.trunc_normal_(last.cls_token, std=0.02)

    # ------------------------------------------------------------------ timm interface
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"stages.{i}.cls_token" for i, s in enumerate(self.stages) if s.cls_token is not None}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stages\.0\.patch_embed",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.(patch_embed|cls_token)", (0,)),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for s in self.stages:
            s.grad_checkpointing = enable

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs as feature maps (class token removed).

        Args:
            x: input images ``(B, C, H, W)``.
            indices: take the last ``n`` stages if int, all if None, else the listed stage indices.
            norm: apply the final norm to the last stage's output (the only stage it fits).
            stop_early: stop after the last requested stage (only with ``intermediates_only``).
            output_fmt: ``'NCHW'`` maps or ``'NLC'`` token sequences.
            intermediates_only: return only the list of intermediates.

        Returns:
            ``intermediates`` or ``(forward_features(x), intermediates)``.
        """
        check_output_fmt(output_fmt)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_index = len(self.stages) - 1
        stages = self.stages[: max_index + 1] if (stop_early and intermediates_only) else self.stages
        intermediates: list[Tensor] = []
        for i, stage in enumerate(stages):
            tokens, hw = stage(x)
            prefix = stage.num_prefix_tokens
            if i in take_indices:
                y = self.norm(tokens) if (norm and i == last_index) else tokens
                intermediates.append(tokens_to_nchw(y, hw, prefix) if output_fmt == "NCHW" else y[:, prefix:])
            x = tokens if i == last_index else tokens_to_nchw(tokens, hw, prefix)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop stages after the last requested one (and optionally the norm / head)."""
        _, max_index = feature_take_indices(len(self.stages), indices)
        if max_index < len(self.stages) - 1:
            prune_norm = True  # the final norm belongs to the last stage's width
        return self._prune_trunk("stages", indices, prune_norm, prune_head)

    def forward_features(self, x: Tensor) -> Tensor:
        """Final tokens ``(B, num_prefix_tokens + H*W, C)`` after the final LayerNorm."""
        for i, stage in enumerate(self.stages):
            x, hw = stage(x)
            if i < len(self.stages) - 1:
                x = tokens_to_nchw(x, hw, stage.num_prefix_tokens)
        return self.norm(x)


# ---------------------------------------------------------------------- registration
_cfg = cfg_factory(
    crop_pct=0.875,
    first_conv="stages.0.patch_embed.proj",
    license="mit",
    paper_ids="arXiv:2103.15808",
    paper_name="CvT: Introducing Convolutions to Vision Transformers",
)

default_cfgs = generate_default_cfgs(
    {
        "cvt_13": _cfg(),
        "cvt_21": _cfg(),
        "cvt_13_c32": _cfg(**C32_CFG),
        "cvt_13_drloc": _cfg(),
        "cvt_21_c32": _cfg(**C32_CFG),
    }
)

# 32-px embedding: stage-1 conv 7x7 with stride 1 (padding 3); stages 2-3 unchanged (3x3, stride 2).
C32_EMBED = dict(patch_sizes=(7, 3, 3), patch_strides=(1, 2, 2), patch_paddings=(3, 1, 1))


def _create_cvt(variant: str, pretrained: bool = False, **kwargs: Any) -> CvT:
    return build_model(CvT, variant, pretrained, **kwargs)


@register_model
def cvt_13(pretrained: bool = False, **kwargs: Any) -> CvT:
    """CvT-13 (depths 1/2/10), 224 px, final grid 14x14, ~20.0 M params."""
    args = dict(embed_dims=(64, 192, 384), depths=(1, 2, 10), num_heads=(1, 3, 6))
    return _create_cvt("cvt_13", pretrained, **dict(args, **kwargs))


@register_model
def cvt_21(pretrained: bool = False, **kwargs: Any) -> CvT:
    """CvT-21 (depths 1/4/16), 224 px, final grid 14x14, ~31.6 M params."""
    args = dict(embed_dims=(64, 192, 384), depths=(1, 4, 16), num_heads=(1, 3, 6))
    return _create_cvt("cvt_21", pretrained, **dict(args, **kwargs))


@register_model
def cvt_13_drloc(pretrained: bool = False, **kwargs: Any) -> CvT:
    """CvT-13 as the DRLoc authors' released runs built it (see the module docstring): no class
    token, average-pooled classifier without a final norm, shared k/v conv, no q/k/v bias,
    19.94 M params; final grid 14x14 at 224 px."""
    args = dict(
        embed_dims=(64, 192, 384),
        depths=(1, 2, 10),
        num_heads=(1, 3, 6),
        patch_paddings=(3, 1, 1),
        class_token=False,
        global_pool="avg",
        final_norm=False,
        shared_kv_conv=True,
        qkv_bias=False,
    )
    return _create_cvt("cvt_13_drloc", pretrained, **dict(args, **kwargs))


@register_model
def cvt_13_c32(pretrained: bool = False, **kwargs: Any) -> CvT:
    """CvT-13 for 32-px inputs: embedding strides 1/2/2, final grid 8x8 at 32 px."""
    args = dict(embed_dims=(64, 192, 384), depths=(1, 2, 10), num_heads=(1, 3, 6), **C32_EMBED)
    return _create_cvt("cvt_13_c32", pretrained, **dict(args, **kwargs))


@register_model
def cvt_21_c32(pretrained: bool = False, **kwargs: Any) -> CvT:
    """CvT-21 for 32-px inputs: embedding strides 1/2/2, final grid 8x8 at 32 px."""
    args = dict(embed_dims=(64, 192, 384), depths=(1, 4, 16), num_heads=(1, 3, 6), **C32_EMBED)
    return _create_cvt("cvt_21_c32", pretrained, **dict(args, **kwargs))
