"""Evaluate a checkpoint: ``python -m vt_drloc.eval ckpt_path=<run>/checkpoints/last.ckpt data=cifar10``.

The model (and its input size) come from the checkpoint; the data from ``data=...``. Writes the
same ``results.json`` fields as a training run (val/test acc1/acc5, parameter counts, ...).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from vt_drloc.app.checkpoints import check_output_dir, load_checkpoint_file
from vt_drloc.app.config import (
    CONFIG_PATH,
    UserError,
    exit_on_user_error,
    prepare_data_checked,
    print_config_tree,
    run_cli,
)
from vt_drloc.app.results import metric, write_results
from vt_drloc.faces.module import DrLocModule

log = logging.getLogger("vt_drloc.eval")


def checkpoint_img_size(hparams: dict[str, Any]) -> int | None:
    size = hparams.get("input_size") or (hparams.get("model_kwargs") or {}).get("img_size")
    if isinstance(size, (list, tuple)):
        size = size[-1]
    return size


def print_split_table(
    split: str, data: str, size: int | None, acc1: float | None, acc5: float | None, loss: float | None
) -> None:
    """One table per scored split, titled with the split's name (val / test), the data and its size."""
    from rich.console import Console
    from rich.table import Table

    images = f", {size} images" if size is not None else ""
    table = Table(title=f"{split} split of {data}{images}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in (("acc1", acc1), ("acc5", acc5), ("loss", loss)):
        table.add_row(f"{split}/{name}", "-" if value is None else f"{value:.4f}")
    Console().print(table)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score the checkpoint ``cfg.ckpt_path`` on ``cfg.data``; returns what goes into ``results.json``."""
    output_dir = Path(cfg.paths.output_dir)
    trust = bool(cfg.get("trust_checkpoint"))
    checkpoint = load_checkpoint_file(cfg.ckpt_path, trust=trust)
    hparams = checkpoint["hyper_parameters"]
    check_output_dir(output_dir)
    with open_dict(cfg):
        cfg.data.img_size = checkpoint_img_size(hparams)
        cfg.data.mixup_alpha = 0.0
        cfg.data.cutmix_alpha = 0.0
    if cfg.get("print_config"):
        print_config_tree(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    start = time.perf_counter()

    datamodule = instantiate(cfg.data)
    prepare_data_checked(datamodule, "test")
    if datamodule.num_classes != hparams["num_classes"]:
        raise UserError(
            f"ckpt_path={cfg.ckpt_path!r} has {hparams['num_classes']} classes but data={cfg.data.name!r} has "
            f"{datamodule.num_classes}; evaluate it on the data it was trained for."
        )
    model = DrLocModule.load_from_checkpoint(cfg.ckpt_path, map_location="cpu", weights_only=not trust)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, default_root_dir=str(output_dir))
    results: dict[str, Any] = {
        "status": "ok",
        "task_name": cfg.task_name,
        "ckpt_path": str(cfg.ckpt_path),
        "model": hparams["model_name"],
        "data": cfg.data.name,
        "seed": cfg.seed,
        "lambda_drloc": float(hparams.get("lambda_drloc", 0.0)),
        "train_size": datamodule.train_size,
        "img_size": cfg.data.img_size,
        "epochs": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "backbone_params": model.num_backbone_params,
        "head_params": model.num_head_params,
    }
    for split in cfg.splits:
        if split not in ("val", "test"):
            raise UserError(f"splits contains {split!r}; use val and/or test.")
        loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
        # the module logs under test/ for any loader passed to trainer.test: Lightning's own table would
        # call every split "test", so the split's table is printed here under its own name
        trainer.test(model, dataloaders=loader, verbose=False)
        results[f"{split}_acc1"] = metric(trainer.callback_metrics, "test/acc1")
        results[f"{split}_acc5"] = metric(trainer.callback_metrics, "test/acc5")
        if trainer.is_global_zero:
            size = len(loader.dataset) if hasattr(loader, "dataset") else None
            print_split_table(
                split,
                cfg.data.name,
                size,
                results[f"{split}_acc1"],
                results[f"{split}_acc5"],
                metric(trainer.callback_metrics, "test/loss"),
            )
    results["wall_time_s"] = time.perf_counter() - start
    results["output_dir"] = str(output_dir)
    if trainer.is_global_zero:
        path = write_results(output_dir, results)
        log.info("val acc1 %s, test acc1 %s; wrote %s", results.get("val_acc1"), results.get("test_acc1"), path)
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    evaluate(cfg)


def main() -> None:
    """Console entry point (``vt-drloc-eval`` / ``python -m vt_drloc.eval``)."""
    run_cli(_hydra_main)


if __name__ == "__main__":
    main()
