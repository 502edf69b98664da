"""Images/s of the Lightning path (DrLocModule in a Trainer, as vt_drloc.train runs it) against a
bare PyTorch loop over the same model, data, optimizer and batches, and DRLoc on vs off.

    python bench/loop_overhead.py [--epochs 2] [--reps 2] [--samples-per-class 100]

The model is the study's small ViT (vit_study: 6 blocks, width 128, 4x4 patches at 32 px, 1.2 M
parameters) on CIFAR-10 images from the offline archive (``samples_per_class`` per class, the
study's basic augmentation, batch 64, num_workers=0 so both paths read batches the same way).
Variants run alternately (bare, lightning, lightning+DRLoc, bare, ...) so drifts in machine load
hit all of them; each timed run follows one untimed warm-up epoch. Reported: training images per
second (median over reps) and the ratios lightning / bare (goal >= 0.97) and DRLoc on / off wall
time. Prints a table and writes bench/results/loop_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from vt_drloc import DrLocModule
from vt_drloc.data import ImageDataModule
from vt_drloc.faces.module import classification_loss
from vt_drloc.faces.optim import warmup_cosine_factor, weight_decay_groups

warnings.filterwarnings("ignore")
VIT_STUDY = dict(img_size=32, patch_size=4, depth=6, embed_dim=128, num_heads=4, drop_path_rate=0.1)


def datamodule(samples_per_class: int) -> ImageDataModule:
    dm = ImageDataModule(
        "cifar10",
        samples_per_class=samples_per_class,
        img_size=32,
        batch_size=64,
        num_workers=0,
        augment="basic",
        cache=True,
        val_split="holdout",
        val_fraction=0.02,
        seed=0,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def module(lam: float) -> DrLocModule:
    torch.manual_seed(0)
    return DrLocModule(
        "vit_tiny_patch16_224",
        num_classes=10,
        lambda_drloc=lam,
        model_kwargs=VIT_STUDY,
        schedule="constant",
        seed=0,
        lr=1e-3,
        warmup_epochs=0,
    )


def bare_loop(dm: ImageDataModule, epochs: int) -> tuple[float, int]:
    """The same model and AdamW groups trained by a plain loop: (seconds of the timed epochs, images)."""
    model = module(0.0).model.train()
    total = (epochs + 1) * len(dm.train_dataloader())
    optimizer = torch.optim.AdamW(weight_decay_groups([model], 0.05), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, total, 0, 1e-6 / 1e-3)
    )
    images, start = 0, 0.0
    for epoch in range(epochs + 1):
        if epoch == 1:
            start = time.perf_counter()
        for x, y in dm.train_dataloader():
            loss = classification_loss(model(x), y, 0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if epoch >= 1:
                images += x.shape[0]
    return time.perf_counter() - start, images


class EpochTimer(pl.Callback):
    """Seconds and images of the training epochs after the first (the warm-up epoch)."""

    def __init__(self) -> None:
        self.seconds, self.images, self._start = 0.0, 0, 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch >= 1:
            self.images += batch[0].shape[0]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= 1:
            self.seconds += time.perf_counter() - self._start


def lightning_run(dm: ImageDataModule, epochs: int, lam: float) -> tuple[float, int]:
    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs + 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(module(lam), train_dataloaders=dm.train_dataloader())
    return timer.seconds, timer.images


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per run (after one warm-up epoch)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--samples-per-class", type=int, default=100)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "loop_overhead.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dm = datamodule(args.samples_per_class)
    rates: dict[str, list[float]] = {"bare": [], "lightning": [], "lightning_drloc": []}
    seconds: dict[str, list[float]] = {k: [] for k in rates}
    for _ in range(args.reps):
        for key, run in (
            ("bare", lambda: bare_loop(dm, args.epochs)),
            ("lightning", lambda: lightning_run(dm, args.epochs, 0.0)),
            ("lightning_drloc", lambda: lightning_run(dm, args.epochs, 1.0)),
        ):
            secs, images = run()
            rates[key].append(images / secs)
            seconds[key].append(secs)
    median = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "images_per_s": median,
        "lightning_over_bare": median["lightning"] / median["bare"],
        "drloc_on_over_off_wall": statistics.median(seconds["lightning_drloc"])
        / statistics.median(seconds["lightning"]),
        "runs": {"rates": rates, "seconds": seconds},
        "setup": {
            "model": "vit_study",
            "train_images": dm.train_size,
            "batch": 64,
            "epochs_timed": args.epochs,
            "reps": args.reps,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "machine": platform.platform(),
        },
    }
    print(f"{'variant':<18} {'images/s (median)':>18}")
    for key, value in median.items():
        print(f"{key:<18} {value:>18.1f}")
    print(
        f"lightning / bare images/s: {result['lightning_over_bare']:.3f}   DRLoc on / off wall time: "
        f"{result['drloc_on_over_off_wall']:.3f}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
