"""Mixup / CutMix soft targets, the on-device hook in a real Trainer, transforms and Hydra."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from image_folders import make_image_folder
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T

from vt_drloc.data import ImageDataModule, apply_mixup, build_eval_transform, build_mixup, build_train_transform
from vt_drloc.data.specs import SPECS


def make_toy_folder(root: Path, name: str = "toy", classes=("cat", "dog", "emu", "fox"), per_class: int = 6) -> Path:
    return make_image_folder(root, name, classes, per_class, size=16, ext="png")


# ---------------------------------------------------------------------------------------------
# mixup function
# ---------------------------------------------------------------------------------------------


def test_apply_mixup_soft_targets() -> None:
    torch.manual_seed(0)
    fn = build_mixup(10, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    x = torch.rand(8, 3, 16, 16)
    y = torch.arange(8)
    x0 = x.clone()
    mx, my = apply_mixup((x, y), fn)
    assert mx.shape == (8, 3, 16, 16)
    assert my.shape == (8, 10) and my.dtype == torch.float32
    assert torch.allclose(my.sum(1), torch.ones(8), atol=1e-5)
    # Each row mixes the sample's own class with its partner's (i with 7 - i).
    top2 = my.topk(2, dim=1).indices.sort(dim=1).values
    expected = torch.stack([torch.minimum(y, y.flip(0)), torch.maximum(y, y.flip(0))], 1)
    assert torch.equal(top2, expected)
    assert not torch.equal(mx, x0)


def test_apply_mixup_odd_batch_and_passthrough() -> None:
    fn = build_mixup(5, mixup_alpha=1.0, label_smoothing=0.0)
    x, y = torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4])
    last = x[-1].clone()
    mx, my = apply_mixup([x, y], fn)
    assert my.shape == (5, 5)
    assert torch.equal(my[-1], torch.tensor([0.0, 0, 0, 0, 1]))  # unmixed one-hot
    assert torch.equal(mx[-1], last)
    assert build_mixup(5) is None
    assert apply_mixup((x, y), None)[1] is y
    soft = torch.full((5, 5), 0.2)
    assert apply_mixup((x, soft), fn)[1] is soft  # already soft: unchanged


# ---------------------------------------------------------------------------------------------
# on_after_batch_transfer inside a real Trainer
# ---------------------------------------------------------------------------------------------


class _Probe(pl.LightningModule):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3 * 16 * 16, num_classes)
        self.train_targets: list[torch.Tensor] = []
        self.val_targets: list[torch.Tensor] = []

    def forward(self, x):
        return self.lin(x.flatten(1))

    def training_step(self, batch, _):
        x, y = batch
        self.train_targets.append(y.detach().clone())
        logits = self(x)
        return torch.sum(-y * logits.log_softmax(-1), dim=-1).mean()

    def validation_step(self, batch, _):
        self.val_targets.append(batch[1].clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_mixup_runs_on_device_only_while_training(tmp_path: Path) -> None:
    make_toy_folder(tmp_path)
    dm = ImageDataModule(
        "folder",
        root=str(tmp_path),
        folder_name="toy",
        img_size=16,
        batch_size=6,
        num_workers=0,
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        label_smoothing=0.1,
    )
    probe = _Probe(num_classes=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(probe, datamodule=dm)
    assert dm.mixup_fn is not None and dm.mixup_fn.num_classes == 4
    assert len(probe.train_targets) == 2
    for y in probe.train_targets:
        assert y.shape == (6, 4) and y.dtype == torch.float32
        assert torch.allclose(y.sum(1), torch.ones(6), atol=1e-5)
    assert probe.val_targets and all(v.ndim == 1 and v.dtype == torch.int64 for v in probe.val_targets)
    # The plain method mixes regardless of the trainer state.
    x, y = next(iter(dm.val_dataloader()))
    assert dm.mix((x, y))[1].shape == (len(y), 4)


# ---------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------


def test_transform_recipes() -> None:
    spec = SPECS["cifar10"]
    tf32 = build_train_transform(32, spec.mean, spec.std, augment="paper", native_size=32)
    names = [type(t).__name__ for t in tf32.transforms]
    assert isinstance(tf32.transforms[0], T.RandomCrop) and tf32.transforms[0].padding == 4
    assert names[1:] == ["RandomHorizontalFlip", "RandAugment", "MaybeToTensor", "Normalize", "RandomErasing"]
    assert tf32.transforms[-1].probability == 0.25
    assert tf32.transforms[-2].mean.tolist() == pytest.approx(list(spec.mean))
    tf224 = build_train_transform(224, spec.mean, spec.std, augment="paper", native_size=32)
    assert isinstance(tf224.transforms[0], RandomResizedCropAndInterpolation)
    assert tf224.transforms[0].size == (224, 224)
    no_aa = build_train_transform(
        32, spec.mean, spec.std, augment="paper", native_size=32, auto_augment="none", color_jitter=0.3
    )
    assert "RandAugment" not in [type(t).__name__ for t in no_aa.transforms]
    assert "ColorJitter" in [type(t).__name__ for t in no_aa.transforms]
    basic = build_train_transform(32, spec.mean, spec.std, augment="basic", native_size=32)
    assert [type(t).__name__ for t in basic.transforms] == [
        "RandomCrop",
        "RandomHorizontalFlip",
        "MaybeToTensor",
        "Normalize",
    ]
    ev = build_eval_transform(224, spec.mean, spec.std, native_size=32)
    assert [type(t).__name__ for t in ev.transforms][:2] == ["Resize", "CenterCrop"]
    assert ev.transforms[0].size == 256  # 224 / 0.875
    ev32 = build_eval_transform(32, spec.mean, spec.std, native_size=32)
    assert [type(t).__name__ for t in ev32.transforms] == ["ToTensor", "Normalize"]
    img = Image.new("RGB", (40, 30), (255, 0, 0))
    assert tf224(img).shape == (3, 224, 224) and ev(img).shape == (3, 224, 224)


# ---------------------------------------------------------------------------------------------
# Hydra instantiation
# ---------------------------------------------------------------------------------------------


def test_hydra_instantiate_with_plain_config(tmp_path: Path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    make_toy_folder(tmp_path)
    cfg = OmegaConf.create(
        {
            "_target_": "vt_drloc.data.ImageDataModule",
            "name": "folder",
            "root": str(tmp_path),
            "folder_name": "toy",
            "img_size": 16,
            "samples_per_class": 2,
            "seed": 3,
            "num_workers": 0,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "scale": [0.5, 1.0],
            "mixup_alpha": 0.2,
        }
    )
    dm = instantiate(cfg)
    assert isinstance(dm, ImageDataModule)
    dm.setup()
    assert dm.train_size == 8 and dm.mean == (0.5, 0.5, 0.5)
    assert dm.hparams["samples_per_class"] == 2 and dm.hparams["name"] == "folder"


def test_randaugment_posterize_at_max_magnitude_does_not_crash() -> None:
    # rand-m9-mstd0.5 can draw magnitude 10 -> PosterizeIncreasing asks for 0 bits, which current
    # Pillow rejects; the data layer must not let that kill a worker.
    spec = SPECS["cifar10"]
    tf = build_train_transform(32, spec.mean, spec.std, augment="paper", native_size=32)
    ra = next(t for t in tf.transforms if type(t).__name__ == "RandAugment")
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0
    img = Image.new("RGB", (32, 32), (200, 120, 60))
    out = op(img)
    assert out.size == (32, 32) and max(out.getextrema()[c][1] for c in range(3)) == 0
