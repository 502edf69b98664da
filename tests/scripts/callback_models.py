"""User-style LightningModules for the DrLocCallback tests and the DDP script.

Written the way an existing project would write them: no DRLoc anywhere, an optimizer over a
submodule's parameters and a scheduler of its own.
"""

from __future__ import annotations

import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from torch import nn

VIT = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)  # 4x4 grid


class HandViT(nn.Module):
    """A small ViT that is not a timm model: patch conv, class token, ``blocks``, ``norm``, head."""

    def __init__(self, num_classes: int = 10, dim: int = 32, patch: int = 8, img: int = 32, depth: int = 1):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + (img // patch) ** 2, dim) * 0.02)
        layer = dict(d_model=dim, nhead=2, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.blocks = nn.Sequential(*[nn.TransformerEncoderLayer(**layer) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens[:, 0])


class Classifier(pl.LightningModule):
    """An existing project's module: cross-entropy, AdamW over ``self.net`` only, a LambdaLR."""

    def __init__(self, kind: str = "timm", lr: float = 1e-3, return_dict: bool = False):
        super().__init__()
        self.save_hyperparameters()
        if kind == "timm":
            self.net = timm.create_model("vit_tiny_patch16_224", num_classes=10, **VIT)
        else:
            self.net = HandViT()
        self.task_losses: list[float] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.task_losses.append(loss.item())
        self.log("train/ce", loss)
        return {"loss": loss, "ce": loss.detach()} if self.hparams.return_dict else loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x), y))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=0.05)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def random_loader(n: int = 16, batch: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
