"""Paper rows on one CUDA GPU within a time budget, with no Hydra / OmegaConf needed.

Runs on any machine with torch, Lightning (``lightning`` or ``pytorch_lightning``), timm and
torchmetrics: the lent accelerator machine's own Python, or the project's venv. Reads the reduced
Flowers-102 archive of ``bench/make_flowers_subset.py`` (official split, test set whole) and writes, under
``--out``, one ``results.json`` per run plus ``table.md`` / ``summary.json``:

1. **smoke**: DrLocModule (Swin-T, 224 px) in ``16-mixed`` under DDP on one device, a few hundred steps:
   images/s, peak memory, that the loss is finite.
2. **step ratio**: seconds per training step of Swin-T at 224 px in ``16-mixed`` with DRLoc (the paper's
   λ = 0.5) over without (λ = 0), measured alternately in one process.
3. **rows**: Swin-T on Flowers-102 from scratch, λ = 0 and λ = 0.5, the paper's recipe (AdamW, lr
   5e-4 · batch / 512, RandAugment, Mixup / CutMix, label smoothing 0.1) for as many epochs as fit the
   remaining budget (both λ the same number); warm-ups and decays scale with the epochs as the released
   runs' 20 / 300 of 100. Test accuracy on all 6,149 test images.

    python bench/gpu_paper_rows.py --data-root bench/data --budget-s 540
    python bench/gpu_paper_rows.py --dry-run --data-root /tmp/tiny       # CPU, tiny settings (CI)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

try:  # the faces exist for both packages; use whichever the machine has
    import lightning.pytorch as pl  # noqa: E402

    from vt_drloc.lightning import DrLocModule, ImageDataModule  # noqa: E402
except ImportError:  # pragma: no cover - depends on the machine
    import pytorch_lightning as pl  # noqa: E402

    from vt_drloc import DrLocModule  # noqa: E402
    from vt_drloc.data import ImageDataModule  # noqa: E402

PAPER_LAMBDA = 0.5  # the paper's λ for Swin-T
SWIN_T = ("swin_tiny_patch4_window7_224", {})
TINY_SWIN = (
    "swin_tiny_patch4_window7_224",
    dict(img_size=32, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2)),
)


class StepTimer(pl.Callback):
    """Wall time of each training step after ``skip`` warm-up steps (CUDA synchronised)."""

    def __init__(self, skip: int = 3):
        self.skip, self.times, self._start = skip, [], 0.0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._sync()
        if trainer.global_step > self.skip or not self.skip:
            self.times.append(time.perf_counter() - self._start)


def settings(dry: bool) -> dict[str, Any]:
    if dry:
        return dict(
            accelerator="cpu",
            precision="32-true",
            strategy="auto",
            model=TINY_SWIN,
            img=32,
            batch=8,
            workers=0,
            smoke_steps=3,
            ratio_steps=3,
            skip=0,
        )
    return dict(
        accelerator="gpu",
        precision="16-mixed",
        strategy="ddp",
        model=SWIN_T,
        img=224,
        batch=128,
        workers=min(16, os.cpu_count() or 4),
        smoke_steps=60,
        ratio_steps=30,
        skip=5,
    )


def datamodule(args: argparse.Namespace, cfg: dict[str, Any], seed: int = 0) -> Any:
    return ImageDataModule(
        name="flowers102",
        root=str(args.data_root),
        img_size=cfg["img"],
        batch_size=cfg["batch"],
        eval_batch_size=256,
        num_workers=cfg["workers"],
        persistent_workers=cfg["workers"] > 0,
        val_split="val",
        seed=seed,
        augment="paper",
        auto_augment="rand-m9-mstd0.5-inc1",
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        label_smoothing=0.1,
    )


def module(cfg: dict[str, Any], lam: float, epochs: int) -> Any:
    name, kwargs = cfg["model"]
    warmup, decay = max(1, round(0.2 * epochs)), 3 * epochs  # the released 20 / 300 of 100 epochs
    return DrLocModule(
        name,
        num_classes=102,
        lambda_drloc=lam,
        model_kwargs=kwargs,
        input_size=cfg["img"],
        lr=5e-4 * cfg["batch"] / 512,
        weight_decay=0.05,
        warmup_epochs=warmup,
        min_lr=5e-6,
        lr_decay_epochs=decay,
        label_smoothing=0.1,
        drloc=dict(schedule="warmup_decay", warmup_epochs=warmup, decay_epochs=decay, interval="epoch", sample_size=64),
    )


def trainer(cfg: dict[str, Any], out: Path, **kwargs: Any) -> Any:
    base = dict(
        accelerator=cfg["accelerator"],
        devices=1,
        precision=cfg["precision"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
        limit_val_batches=0,
        gradient_clip_val=5.0,
    )
    return pl.Trainer(**{**base, **kwargs})


def write(path: Path, record: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(record, indent=2) + "\n")


def run_smoke(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    timer = StepTimer(cfg["skip"])
    model = module(cfg, PAPER_LAMBDA, epochs=1)
    t = trainer(cfg, args.out, strategy=cfg["strategy"], max_steps=cfg["smoke_steps"], callbacks=[timer])
    start = time.perf_counter()
    t.fit(model, datamodule=datamodule(args, cfg))
    loss = float(t.callback_metrics.get("train/loss", torch.tensor(float("nan"))))
    record = dict(
        row="smoke",
        strategy=cfg["strategy"],
        precision=cfg["precision"],
        steps=t.global_step,
        wall_s=round(time.perf_counter() - start, 1),
        s_per_step=round(sum(timer.times) / max(1, len(timer.times)), 4),
        images_per_s=round(cfg["batch"] / (sum(timer.times) / max(1, len(timer.times))), 1) if timer.times else None,
        peak_mem_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None,
        loss_finite=math.isfinite(loss),
    )
    write(args.out / "smoke", record)
    return record


def run_ratio(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    """s/step with and without DRLoc, alternating two rounds each (one process, same data)."""
    per: dict[float, list[float]] = {0.0: [], PAPER_LAMBDA: []}
    for _ in range(2):
        for lam in per:
            timer = StepTimer(cfg["skip"])
            trainer(cfg, args.out, max_steps=cfg["ratio_steps"], callbacks=[timer]).fit(
                module(cfg, lam, epochs=1), datamodule=datamodule(args, cfg)
            )
            per[lam].extend(timer.times)
    off, on = (sorted(per[lam])[len(per[lam]) // 2] for lam in (0.0, PAPER_LAMBDA))  # medians
    record = dict(
        row="step_ratio",
        model=cfg["model"][0],
        img=cfg["img"],
        batch=cfg["batch"],
        precision=cfg["precision"],
        off_s=round(off, 4),
        on_s=round(on, 4),
        ratio=round(on / off, 3),
    )
    write(args.out / "step_ratio", record)
    return record


def final_drloc(metrics: dict[str, Any]) -> float | None:
    """The last epoch's mean training DRLoc loss, as logged by the module."""
    value = metrics.get("train/drloc_epoch", metrics.get("train/drloc"))
    return None if value is None else float(value)


def run_row(args: argparse.Namespace, cfg: dict[str, Any], lam: float, epochs: int) -> dict[str, Any]:
    pl.seed_everything(args.seed, workers=True)
    model = module(cfg, lam, epochs)
    t = trainer(cfg, args.out, max_epochs=epochs)
    dm = datamodule(args, cfg, seed=args.seed)
    start = time.perf_counter()
    t.fit(model, datamodule=dm)
    train_s = time.perf_counter() - start
    drloc_loss = final_drloc(t.callback_metrics) if lam > 0 else None  # read before test() resets the metrics
    metrics = t.test(model, datamodule=dm, verbose=False)[0]
    loss = model.drloc
    from vt_drloc.core import task_record

    record = dict(
        row=f"swin_t_flowers102_lam{lam:g}",
        model=cfg["model"][0],
        lambda_drloc=lam,
        seed=args.seed,
        epochs=epochs,
        img=cfg["img"],
        batch=cfg["batch"],
        precision=cfg["precision"],
        test_acc1=metrics.get("test/acc1"),
        test_acc5=metrics.get("test/acc5"),
        train_s=round(train_s, 1),
        **task_record(loss, drloc_loss),
    )
    write(args.out / record["row"], record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=ROOT / "bench" / "data", help="folder holding flowers102.tar")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_paper_rows")
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of the whole script")
    parser.add_argument("--max-epochs", type=int, default=100, help="the paper's epochs: never more")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="CPU, a tiny Swin at 32 px, a few steps")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if not (args.data_root / "flowers102.tar").is_file():
        print(
            f"gpu_paper_rows: no flowers102.tar in {args.data_root}; make it with bench/make_flowers_subset.py.",
            file=sys.stderr,
        )
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_paper_rows: no CUDA device visible; run it on a GPU machine, or pass --dry-run.", file=sys.stderr)
        return 3
    cfg = settings(args.dry_run)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(
        f"device={device} torch={torch.__version__} lightning={pl.__version__} budget={args.budget_s:.0f}s", flush=True
    )

    smoke = run_smoke(args, cfg)
    print("smoke", smoke, flush=True)
    ratio = run_ratio(args, cfg)
    print("step_ratio", ratio, flush=True)

    # epochs that fit: the smoke's images/s over one epoch of training images plus a test pass, both λ
    left = args.budget_s - (time.perf_counter() - start) - 30  # start-up and test-time margin
    epoch_s = (1020 + 6149 / 3) / (smoke["images_per_s"] or 1.0)
    epochs = 1 if args.dry_run else max(1, min(args.max_epochs, int(left / 2 / (epoch_s * ratio["ratio"]))))
    rows = [run_row(args, cfg, lam, epochs) for lam in (0.0, PAPER_LAMBDA)]

    lines = [
        f"device: {device}; precision {cfg['precision']}; {time.perf_counter() - start:.0f} s in all",
        "",
        f"smoke ({smoke['strategy']}, 1 device): {smoke['images_per_s']} img/s, {smoke['s_per_step']} s/step, peak "
        f"{smoke['peak_mem_gb']} GB, loss finite: {smoke['loss_finite']}",
        f"DRLoc step ratio, {ratio['model']} at {ratio['img']} px, batch {ratio['batch']}: {ratio['on_s']} / "
        f"{ratio['off_s']} s = {ratio['ratio']}",
        "",
        "| row | λ | epochs | test acc1 | test acc5 | DRLoc L1 / chance | train s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        over = r.get("drloc_final_over_chance")
        lines.append(
            f"| {r['row']} | {r['lambda_drloc']:g} | {r['epochs']} | {100 * r['test_acc1']:.2f} | "
            f"{100 * r['test_acc5']:.2f} | {'–' if over is None else f'{over:.2f}'} | {r['train_s']} |"
        )
    table = "\n".join(lines) + "\n"
    (args.out / "table.md").write_text(table)
    (args.out / "summary.json").write_text(json.dumps(dict(smoke=smoke, step_ratio=ratio, rows=rows), indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
