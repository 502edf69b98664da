"""User-style LightningModules around the ViTs other libraries build, written as their users write them.

Each family gives a tiny model (32 px, random weights from a config: nothing is downloaded), the way its
users train it, and the ``tap=`` / ``prefix_tokens=`` an expert would pass to read the same grid that
``DrLocCallback`` should find by itself (before the final norm, ``tap_norm="pre"``, the default).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class ImageDicts(Dataset):
    """Hugging Face style samples: {"pixel_values": (3, 32, 32), "labels": int}."""

    def __init__(self, n: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class ImagePairs(ImageDicts):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.x[i], self.y[i]


# ------------------------------------------------------------------------------------------- models
class SeqFirstViT(nn.Module):
    """A ViT written as Lightning's tutorial writes it: tokens (L, B, C) through nn.TransformerEncoder."""

    def __init__(self, dim: int = 32, patch: int = 8, img: int = 32, num_classes: int = 10):
        super().__init__()
        self.patch = patch
        self.input_layer = nn.Linear(3 * patch * patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(1, 1 + (img // patch) ** 2, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=2 * dim, dropout=0.0)  # sequence-first
        self.transformer = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        patches = x.unfold(2, self.patch, self.patch).unfold(3, self.patch, self.patch)  # B, C, h, w, p, p
        patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(1, 2).flatten(2)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), self.input_layer(patches)], dim=1) + self.pos_embedding
        tokens = self.transformer(tokens.transpose(0, 1))  # (L, B, C)
        return self.mlp_head(tokens[0])


class ConvAttention(nn.Module):
    """Self-attention over the cells of an NCHW map, kept NCHW in and out (as CvT's blocks are)."""

    def __init__(self, dim: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        out = self.attn(tokens, tokens, tokens, need_weights=False)[0]
        return x + self.proj(out.transpose(1, 2).reshape(x.shape))


class TinyCvT(nn.Module):
    """A CvT-style hierarchical backbone: convolutional embeddings, attention on NCHW maps, no final norm."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stages = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), ConvAttention(16)),  # 8x8
            nn.Sequential(nn.Conv2d(16, 32, 2, stride=2), ConvAttention(32)),  # 4x4
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x).mean((2, 3)))


# ------------------------------------------------------------------------------------------- modules
def lightning_module(package: str) -> type:
    return importlib.import_module(package).LightningModule


def make_module(family: str, package: str = "pytorch_lightning") -> Any:
    """The user's LightningModule for ``family`` (see FAMILIES)."""
    base = lightning_module(package)
    hf_family = family.startswith("hf_")

    class UserModule(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.model = build(family)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if hf_family:
                if family == "hf_deit":  # the teacher-distilled head takes no labels: the user's own loss
                    loss = F.cross_entropy(self.model(pixel_values=batch["pixel_values"]).logits, batch["labels"])
                else:
                    loss = self.model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
            else:
                x, y = batch
                loss = F.cross_entropy(self.model(x), y)
            self.log("train/ce", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    return UserModule()


def loader(family: str) -> DataLoader:
    dataset = ImageDicts() if family.startswith("hf_") else ImagePairs()
    return DataLoader(dataset, batch_size=8)


def build(family: str) -> nn.Module:
    if family == "hf_vit":
        from transformers import ViTConfig, ViTForImageClassification

        cfg = ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=10,
        )
        return ViTForImageClassification(cfg)
    if family == "hf_deit":
        from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

        cfg = DeiTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=10,
        )
        return DeiTForImageClassificationWithTeacher(cfg)
    if family == "hf_swin":
        from transformers import SwinConfig, SwinForImageClassification

        cfg = SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=10
        )
        return SwinForImageClassification(cfg)
    if family == "tv_vit":
        from torchvision.models import VisionTransformer

        return VisionTransformer(
            image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
        )
    if family == "tv_swin":
        from torchvision.models import SwinTransformer

        return SwinTransformer(
            patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[4, 4], num_classes=10
        )
    if family == "seq_first":
        return SeqFirstViT()
    if family == "cvt_style":
        return TinyCvT()
    raise ValueError(family)


@dataclass(frozen=True)
class Family:
    """What an expert passes to read the same grid, and what discovery should report."""

    expert: dict[str, Any]
    layout: str
    prefix_tokens: int
    grid: tuple[int, int]
    channels: int
    needs: tuple[str, ...] = field(default=())

    def expert_args(self, module: nn.Module) -> dict[str, Any]:
        return {k: v(module) if callable(v) else v for k, v in self.expert.items()}


def hf_encoder_tap(module: nn.Module, backbone: str) -> str:
    """The module that returns the last block's tokens: ``encoder`` (a ModelOutput) in transformers 4,
    the last of ``layers`` in transformers 5 (which dropped the encoder module of ViT and DeiT)."""
    names = dict(module.named_modules())
    if f"model.{backbone}.encoder" in names:
        return f"model.{backbone}.encoder"
    layers = [n for n in names if n.startswith(f"model.{backbone}.layers.") and n.count(".") == 3]
    return layers[-1]


def hf_attention_tap(module: nn.Module) -> str:
    """An attention module of a transformers ViT: it returns a tuple (output, weights)."""
    return next(n for n in dict(module.named_modules()) if n.endswith(".0.attention"))


FAMILIES: dict[str, Family] = {
    "hf_vit": Family(
        dict(tap=lambda m: hf_encoder_tap(m, "vit"), prefix_tokens=1), "BNC", 1, (4, 4), 32, ("transformers",)
    ),
    "hf_deit": Family(
        dict(tap=lambda m: hf_encoder_tap(m, "deit"), prefix_tokens=2), "BNC", 2, (4, 4), 32, ("transformers",)
    ),
    "hf_swin": Family(dict(tap="model.swin.encoder", prefix_tokens=0), "BNC", 0, (4, 4), 32, ("transformers",)),
    "tv_vit": Family(dict(tap="model.encoder.layers", prefix_tokens=1), "BNC", 1, (4, 4), 32),
    "tv_swin": Family(dict(tap="model.features", grid_format="NHWC"), "NHWC", 0, (4, 4), 32),
    "seq_first": Family(dict(tap="model.transformer", prefix_tokens=1), "NBC", 1, (4, 4), 32),
    "cvt_style": Family(dict(tap="model.stages.1.1"), "NCHW", 0, (4, 4), 32),
}
