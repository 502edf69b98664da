"""Data-loader throughput vs. training throughput of the default small model.

Measures train-loader images/s for CIFAR-10 at 32 px (default augmentation: the paper/DeiT recipe
with pad-and-crop at native size) and Flowers-102 at 224 px (paper augmentation), with 0 and 2
DataLoader workers and the decoded-image cache off / on; beside it, the training images/s
(forward + backward + AdamW step, batch 128) of the default small model, a ViT-Tiny with
img_size=32, patch_size=4, depth 12. Target: the 32-px loader at least 5x faster than training.

Prints a table and writes ``bench/results/data.json``.

    python bench/data.py [--batches 20] [--batch-size 128] [--model-steps 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

import torch

from vt_drloc.data import ImageDataModule

RESULTS = Path(__file__).resolve().parent / "results" / "data.json"


def loader_rate(name: str, img_size: int, workers: int, cache: bool, batch_size: int, batches: int) -> dict:
    """Images/s of ``train_dataloader()`` over ``batches`` batches after one warm-up batch."""
    dm = ImageDataModule(
        name,
        img_size=img_size,
        batch_size=batch_size,
        num_workers=workers,
        cache=cache,
        augment="paper",
        persistent_workers=False,
        pin_memory=False,
    )
    t0 = time.perf_counter()
    dm.setup("fit")
    loader = dm.train_dataloader()  # builds the cache when cache=True
    setup_s = time.perf_counter() - t0
    batches = min(batches, len(loader) - 1)
    it = iter(loader)
    next(it)  # worker start-up and first batch are not throughput
    t0 = time.perf_counter()
    n = 0
    for x, _ in itertools.islice(it, batches):
        n += x.shape[0]
    dt = time.perf_counter() - t0
    del it, loader
    return {
        "dataset": name,
        "img_size": img_size,
        "augment": "paper",
        "workers": workers,
        "cache": cache,
        "images": n,
        "seconds": round(dt, 3),
        "images_per_s": round(n / dt, 1),
        "setup_s": round(setup_s, 2),
        "cache_mb": round(dm.subset_info["cache_bytes"] / 2**20, 1),
    }


def model_rate(batch_size: int, steps: int, img_size: int = 32) -> dict:
    """Training images/s of ViT-Tiny (img_size 32, patch 4, depth 12): fwd + bwd + AdamW step."""
    import timm

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=img_size, patch_size=4, depth=12, num_classes=10
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(batch_size, 3, img_size, img_size)
    y = torch.randint(0, 10, (batch_size,))
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    step()  # warm-up (allocations)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {
        "model": "vit_tiny_patch16_224(img_size=32, patch_size=4, depth=12)",
        "batch_size": batch_size,
        "steps": steps,
        "seconds": round(dt, 3),
        "images_per_s": round(batch_size * steps / dt, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per loader configuration")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model-steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    rows = []
    for name, size in (("cifar10", 32), ("flowers102", 224)):
        for workers in (0, 2):
            for cache in (False, True):
                row = loader_rate(name, size, workers, cache, args.batch_size, args.batches)
                rows.append(row)
                print(
                    f"  measured {name} {size}px workers={workers} cache={cache}: {row['images_per_s']} img/s",
                    flush=True,
                )
    model = model_rate(args.batch_size, args.model_steps)

    train_rate = model["images_per_s"]
    header = "| dataset | px | workers | cache | loader img/s | x model (32 px) | setup s |"
    print("\n" + header)
    print("|" + "---|" * 7)
    for r in rows:
        ratio = f"{r['images_per_s'] / train_rate:.1f}x" if r["img_size"] == 32 else "-"
        print(
            f"| {r['dataset']} | {r['img_size']} | {r['workers']} | {'on' if r['cache'] else 'off'} | "
            f"{r['images_per_s']:.0f} | {ratio} | {r['setup_s']:.1f} |"
        )
    print(
        f"\nmodel: {model['model']}, batch {model['batch_size']}: {train_rate:.0f} training img/s "
        f"(fwd+bwd+AdamW, {torch.get_num_threads()} threads)"
    )
    best32 = max(r["images_per_s"] for r in rows if r["img_size"] == 32)
    worst32 = min(r["images_per_s"] for r in rows if r["img_size"] == 32)
    target_met = worst32 >= 5 * train_rate
    print(
        f"target (32-px loader >= 5x training): {'met' if target_met else 'NOT met'} "
        f"(slowest config {worst32 / train_rate:.1f}x, fastest {best32 / train_rate:.1f}x)"
    )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                },
                "batch_size": args.batch_size,
                "loaders": rows,
                "model": model,
                "target_5x_met": target_met,
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
