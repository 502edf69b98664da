"""Swin Transformer with an absolute position embedding, registered with timm.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021
(arXiv:2103.14030). The authors' Swin code has an ``ape`` switch (off in every released config)
that adds a learned absolute position embedding to the patch tokens; timm's ``SwinTransformer``
dropped it. This file puts it back on top of timm's model, for one question of the DRLoc study
(docs/results.md): the small Swin's DRLoc head does not learn where its tokens are, and Swin's
only position signal is the relative bias inside each window; does an absolute embedding change
that?

The embedding is a ``(1, H, W, C)`` parameter on the patch embedding (``patch_embed.absolute_pos_embed``,
truncated normal, std 0.02, as the authors' code), added after the patch norm, before the first
stage; so ``forward_features``, ``forward_intermediates`` and the feature wrappers of timm's Swin
see it with no change. It is left out of weight decay (``no_weight_decay``), as in the authors'
code. Inputs of another size than ``img_size`` (``strict_img_size=False``) or ``set_input_size``
resample it bicubically, like timm's ViT.

Everything else is timm's ``SwinTransformer``: state-dict keys are timm's plus the one above.

>>> import timm, torch, vt_drloc.models
>>> m = timm.create_model("swin_ape_tiny_patch4_window7_224", img_size=32, patch_size=2,
...                       window_size=4, embed_dim=32, depths=(1, 1), num_heads=(1, 2))
>>> tuple(m.patch_embed.absolute_pos_embed.shape)
(1, 16, 16, 32)
>>> m(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 1000])
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed_nhwc, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn
from torch import Tensor, nn

from vt_drloc.models._layers import build_model, cfg_factory

__all__ = ["PatchEmbedAbsPos", "SwinTransformerAPE"]


class PatchEmbedAbsPos(PatchEmbed):
    """timm's ``PatchEmbed`` (NHWC output) plus a learned absolute position embedding per cell."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.grid_size is None:
            raise ValueError("PatchEmbedAbsPos needs an img_size to size its position embedding; got img_size=None")
        dim = self.proj.out_channels
        self.absolute_pos_embed = nn.Parameter(
            torch.empty(1, *self.grid_size, dim, device=self.proj.weight.device, dtype=self.proj.weight.dtype)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated normal, std 0.02 (the authors' init); timm's ``init_weights(needs_reset=True)`` calls it."""
        if not self.absolute_pos_embed.is_meta:
            trunc_normal_(self.absolute_pos_embed, std=0.02)

    def set_input_size(self, img_size: Any = None, patch_size: Any = None) -> None:
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        if tuple(self.absolute_pos_embed.shape[1:3]) == tuple(self.grid_size):
            return  # same grid: keep the Parameter (optimizer references, requires_grad) as it is
        with torch.no_grad():
            resized = resample_abs_pos_embed_nhwc(self.absolute_pos_embed, list(self.grid_size))
        self.absolute_pos_embed = nn.Parameter(resized, requires_grad=self.absolute_pos_embed.requires_grad)

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.output_fmt.value != "NHWC":
            raise ValueError(
                f"PatchEmbedAbsPos expects output_fmt='NHWC' (Swin's layout), got {self.output_fmt.value!r}"
            )
        # a dynamic input size gives another grid: resample, as timm's ViT does
        return x + resample_abs_pos_embed_nhwc(self.absolute_pos_embed, list(x.shape[1:3]))


class SwinTransformerAPE(SwinTransformer):
    """timm's ``SwinTransformer`` whose patch embedding carries an absolute position embedding."""

    def __init__(self, **kwargs: Any) -> None:
        if "embed_layer" in kwargs:
            raise ValueError("SwinTransformerAPE builds its own embed_layer (PatchEmbedAbsPos); do not pass one")
        super().__init__(embed_layer=PatchEmbedAbsPos, **kwargs)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"patch_embed.absolute_pos_embed"}


_cfg = cfg_factory(
    license="mit",
    paper_ids="arXiv:2103.14030",
    paper_name="Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
    first_conv="patch_embed.proj",
    classifier="head.fc",
    crop_pct=0.9,
)
default_cfgs = generate_default_cfgs({"swin_ape_tiny_patch4_window7_224": _cfg()})

_SWIN_T = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))


@register_model
def swin_ape_tiny_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> SwinTransformerAPE:
    """Swin-T (28 M parameters at 224 px) with an absolute position embedding (the authors' ``ape=True``)."""
    args = dict(_SWIN_T, **kwargs)
    args.setdefault("out_indices", tuple(range(len(args["depths"]))))  # every stage, as timm's Swin
    return build_model(
        SwinTransformerAPE,
        "swin_ape_tiny_patch4_window7_224",
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **args,
    )
