"""Train a timm model with DRLoc: ``python -m vt_drloc.train model=cvt_13 data=flowers102``.

Hydra composes ``conf/train.yaml`` (installed as ``vt_drloc.conf``); ``train(cfg)`` builds
datamodule -> model -> callbacks -> loggers -> trainer in plain sight, fits, tests, and writes
``results.json`` into the run's output folder. Sweeps: ``-m drloc.lambda_drloc=0,0.1,0.5``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from vt_drloc.app.budget import check_min_train_steps, stretch_to_min_steps
from vt_drloc.app.checkpoints import (
    check_output_dir,
    check_resume_checkpoint,
    load_backbone_weights,
    resolve_resume_path,
)
from vt_drloc.app.config import (
    CONFIG_PATH,
    RunInterrupted,
    RunStopped,
    UserError,
    check_drloc_config,
    check_run_config,
    exit_on_user_error,
    instantiate_checked,
    prepare_data_checked,
    print_config_tree,
    run_cli,
)
from vt_drloc.app.progress import RunProgress
from vt_drloc.app.reliability import (
    AtomicCheckpointIO,
    InterruptCheckpoint,
    NonFiniteLossGuard,
    ResumeRngState,
    save_final_checkpoint,
)
from vt_drloc.app.results import Throughput, metric, non_finite_metrics, write_results
from vt_drloc.app.run_folder import RunLock, check_not_in_use, prepend_metric_rows, read_metric_rows, write_hydra_files
from vt_drloc.core import task_record
from vt_drloc.faces.callback import DrLocCallbackBase
from vt_drloc.faces.module import DrLocModuleBase

log = logging.getLogger("vt_drloc.train")


def build_module(cfg: DictConfig, num_classes: int, lambda_drloc: float, global_batch: int | None = None) -> Any:
    """The LightningModule of a run: ``cfg.module`` instantiated (``DrLocModule`` unless the user points
    ``module._target_`` at their own class) with ``num_classes`` from the data and ``lambda_drloc``.

    With ``optim.lr_batch_scale`` set and the ``global_batch`` known, the module's ``lr`` and
    ``lr_min`` are scaled together by global batch / ``lr_batch_scale``, as in the released code
    (its warm-up and floor scale too)."""
    overrides: dict[str, Any] = {}
    scale = cfg.optim.get("lr_batch_scale")
    if scale and global_batch and "lr" in cfg.module:
        overrides["lr"] = lr = cfg.optim.lr * global_batch / scale
        if "lr_min" in cfg.module:
            overrides["lr_min"] = min(cfg.optim.lr_min * global_batch / scale, lr)
    elif scale and global_batch:
        log.warning(
            "optim.lr_batch_scale=%s is set, but the module config (%s) has no lr key, so no learning rate was "
            "scaled; add `lr: ${optim.lr}` to it, or set optim.lr_batch_scale=null",
            scale,
            cfg.module.get("_target_"),
        )
    return instantiate_checked("module", cfg.module, num_classes=num_classes, lambda_drloc=lambda_drloc, **overrides)


def checkpoint_step(path: str) -> int:
    """The global step a checkpoint was saved at (0 if it cannot be read without unpickling)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))
    except Exception:
        return 0


def restore_metric_rows(earlier_rows: dict[Path, list[dict[str, str]]]) -> None:
    if rank_zero_only.rank == 0:
        for path, rows in earlier_rows.items():
            prepend_metric_rows(path, rows)


def instantiate_all(group: DictConfig | None, group_name: str = "callbacks") -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks / logger group (``group_name``: its key, for errors)."""
    if not group:
        return []
    return [
        instantiate_checked(f"{group_name}.{name}", entry)
        for name, entry in group.items()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]


@dataclass(frozen=True)
class CheckedRun:
    """What :func:`check` found in a run config: where the run writes and what it starts from."""

    output_dir: Path
    ckpt_path: str | None  # the checkpoint to resume from (``ckpt_path=last`` resolved), or None
    init_from: str | None  # the weights to fine-tune from, or None
    trust: bool  # trust_checkpoint: files that need full unpickling may be read


def check(cfg: DictConfig) -> CheckedRun:
    """Every check of a run config, in one pass, before any data is read or weights are built: the values
    (``drloc``, then the run's keys), the files it names (the checkpoint to resume, ``init_from``), and the
    run folder (no live run in it, nothing of an earlier run overwritten). Bad input: :class:`UserError`."""
    check_drloc_config(cfg.drloc)
    check_run_config(cfg)
    check_min_train_steps(cfg.get("min_train_steps"))
    output_dir = Path(cfg.paths.output_dir)
    trust = bool(cfg.get("trust_checkpoint"))
    init_from = str(cfg.init_from) if cfg.get("init_from") else None
    ckpt_path = resolve_resume_path(cfg.ckpt_path, output_dir)  # "last": this run dir's checkpoints/last.ckpt
    if ckpt_path:
        model_kwargs = OmegaConf.to_container(cfg.model.kwargs, resolve=True)
        check_resume_checkpoint(ckpt_path, cfg.model.name, model_kwargs, trust=trust)
    if init_from and not Path(init_from).expanduser().is_file():
        raise UserError(
            f"init_from={cfg.init_from!r} does not exist. Pass a timm weight file (.pth / .safetensors) or the .ckpt "
            "of an earlier run."
        )
    if ckpt_path and init_from:
        raise UserError(
            f"init_from={cfg.init_from!r} and ckpt_path={cfg.ckpt_path!r} are both set: resuming restores every "
            "weight, so init_from would be overwritten. Use init_from to start a new (fine-tuning) run, ckpt_path to "
            "continue one."
        )
    if cfg.test_ckpt not in ("last", "best"):
        raise UserError(f"test_ckpt={cfg.test_ckpt!r} is invalid: use 'last' or 'best'.")
    check_not_in_use(output_dir)  # another live run writes here: refuse before touching anything
    check_output_dir(output_dir, resume_from=ckpt_path)
    return CheckedRun(output_dir, ckpt_path, init_from, trust)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job described by ``cfg``; returns what it writes to ``results.json``.

    It reads top to bottom: check the whole config, then (the run folder locked) build the datamodule,
    the callbacks and loggers, the trainer, the module, and fit and test."""
    run = check(cfg)
    with RunLock(run.output_dir):
        write_hydra_files(run.output_dir, cfg)
        pl.seed_everything(cfg.seed, workers=True)
        start = time.perf_counter()
        datamodule = build_datamodule(cfg)
        budget = stretch_to_min_steps(cfg, datamodule)  # small data: more epochs, every schedule stretched alike
        if budget["epoch_factor"] > 1:
            log.info(
                "min_train_steps=%d: %d steps per epoch, so every epoch setting x%d: %s",
                budget["min_train_steps"],
                budget["steps_per_epoch"],
                budget["epoch_factor"],
                ", ".join(f"{k} {a} -> {b}" for k, (a, b) in budget["stretched"].items()),
            )
        callbacks = instantiate_all(cfg.get("callbacks"), "callbacks")
        drloc_callbacks = [cb for cb in callbacks if isinstance(cb, DrLocCallbackBase)]
        throughput, interrupt = Throughput(), InterruptCheckpoint(run.output_dir / "checkpoints")
        # Always on (docs/reliability.md): stop at the first NaN/inf loss term; SIGINT / SIGTERM leave a resumable
        # last.ckpt; resume with the same RNG streams; RunProgress: the run's ETA, and a head that does not learn
        callbacks += [throughput, NonFiniteLossGuard(), ResumeRngState(), interrupt, RunProgress()]
        loggers = instantiate_all(cfg.get("logger"), "logger")
        earlier_rows = metric_rows_to_keep(loggers, run.ckpt_path)  # before the Trainer starts metrics.csv afresh
        trainer: pl.Trainer = instantiate_checked(
            "trainer",
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            default_root_dir=str(run.output_dir),
            plugins=[AtomicCheckpointIO()],  # checkpoints: temp file + os.replace, never torn
        )
        # With DrLocCallback the module is a plain timm classifier and the callback adds the loss.
        lambda_drloc = 0.0 if drloc_callbacks else float(cfg.drloc.lambda_drloc)
        global_batch = cfg.data.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        model = build_module(cfg, datamodule.num_classes, lambda_drloc, global_batch)
        init_report = None
        if run.init_from:  # another task's classifier (other class names) starts new
            names = getattr(datamodule, "class_names", None)
            init_report = load_backbone_weights(
                getattr(model, "model", model), run.init_from, trust=run.trust, class_names=names
            )
        if init_report is not None:
            log_init_report(run.init_from, init_report)
        log_sizes(trainer, loggers, model, datamodule, drloc_callbacks)
        fit_metrics, test_metrics = fit_and_test(cfg, run, trainer, model, datamodule, earlier_rows, interrupt, start)
        results = results_of(
            cfg, run, trainer, model, datamodule, drloc_callbacks, lambda_drloc, init_report, fit_metrics, test_metrics
        )
        results.update(wall_time_s=time.perf_counter() - start, images_per_s=throughput.images_per_second)
        results.update(world_size=trainer.world_size, output_dir=str(run.output_dir), budget=budget)
        if trainer.is_global_zero:
            path = write_results(run.output_dir, results)
            for lg in loggers:
                if isinstance(lg, WandbLogger):
                    lg.experiment.finish()  # end the W&B run: the next job of a multirun starts its own
            log.info("test acc1 %s, acc5 %s; wrote %s", results["test_acc1"], results["test_acc5"], path)
        return results


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """``cfg.data`` built and set up for fitting; a missing data set: one paragraph, exit 2, no model built."""
    datamodule: pl.LightningDataModule = instantiate_checked("data", cfg.data)
    prepare_data_checked(datamodule, "fit", test=bool(cfg.test))
    if cfg.get("print_config"):  # after the data check, so a missing data set's error is all the user sees
        print_config_tree(cfg)
    return datamodule


def log_init_report(init_from: str | None, report: dict[str, list[str]]) -> None:
    log.info(
        "init_from %s: %d backbone tensors loaded, of them %d resampled to this resolution (%s), %d skipped "
        "(shape: %s), %d classifier tensors new (other classes: %s), %d newly initialised (not in the file: %s)",
        init_from,
        len(report["loaded"]),
        len(report["resampled"]),
        ", ".join(report["resampled"]) or "-",
        len(report["skipped"]),
        ", ".join(report["skipped"]) or "-",
        len(report.get("new_classes", [])),
        ", ".join(report.get("new_classes", [])) or "-",
        len(report["missing"]),
        ", ".join(report["missing"]) or "-",
    )


def drloc_face(model: Any, drloc_callbacks: list[Any]) -> DrLocCallbackBase | DrLocModuleBase | None:
    """What adds DRLoc to the run: the DrLocCallback, else the module if it is a DrLocModule (a module of the
    user's own class, module._target_, need not be one), else None. Both faces offer the same names."""
    if drloc_callbacks:
        return drloc_callbacks[0]
    return model if isinstance(model, DrLocModuleBase) else None


def parameter_counts(model: Any, drloc_callbacks: list[Any]) -> dict[str, int]:
    """Backbone and DRLoc head parameters (the head: the module's, or the DrLocCallback's once set up)."""
    face = drloc_face(model, drloc_callbacks)
    head_params = face.num_head_params if face is not None else 0
    if isinstance(face, DrLocModuleBase):
        backbone_params = face.num_backbone_params
    else:  # the callback's head is a submodule of the user's module once set up
        backbone_params = sum(p.numel() for p in model.parameters()) - head_params
    return {"backbone_params": backbone_params, "head_params": head_params}


def log_sizes(trainer: pl.Trainer, loggers: list[Any], model: Any, datamodule: Any, drloc_callbacks: list[Any]) -> None:
    """Log the parameter counts and the training set's size (rank 0), and give them to every logger."""
    if not trainer.is_global_zero:
        return
    sizes = parameter_counts(model, drloc_callbacks)
    backbone_params, head_params = sizes["backbone_params"], sizes["head_params"]
    log.info(
        "params: backbone %.2fM, DRLoc head %.3fM (%.1f%% of the total); train images %d; lr %.3g",
        backbone_params / 1e6,
        head_params / 1e6,
        100 * head_params / max(1, backbone_params + head_params),
        datamodule.train_size,
        model.hparams.get("lr", float("nan")),
    )
    for lg in loggers:
        lg.log_hyperparams({"train_size": datamodule.train_size, **sizes})


def metric_rows_to_keep(loggers: list[Any], ckpt_path: str | None) -> dict[Path, list[dict[str, str]]]:
    """Resuming in place: Lightning's CSVLogger starts metrics.csv afresh, so keep its rows up to the checkpoint."""
    if not ckpt_path:
        return {}
    csv_files = [Path(lg.log_dir) / "metrics.csv" for lg in loggers if isinstance(lg, CSVLogger)]
    return {f: read_metric_rows(f, checkpoint_step(ckpt_path)) for f in csv_files}


def fit_and_test(
    cfg: DictConfig,
    run: CheckedRun,
    trainer: pl.Trainer,
    model: Any,
    datamodule: Any,
    earlier_rows: dict[Path, list[dict[str, str]]],
    interrupt: InterruptCheckpoint,
    start: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``trainer.fit`` (resuming from ``run.ckpt_path``), then ``trainer.test`` if asked: the metrics of each;
    ``earlier_rows`` (see :func:`metric_rows_to_keep`) go back into metrics.csv however fit ends."""
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=run.ckpt_path or None, weights_only=not run.trust)
    except BaseException:
        if interrupt.signal is None:
            raise
        restore_metric_rows(earlier_rows)
        raise stopped_by_signal(cfg, trainer, interrupt, run.output_dir, start) from None
    fit_metrics = dict(trainer.callback_metrics)
    # the weights results.json reports are always on disk, whatever the checkpoint cadence
    save_final_checkpoint(trainer, run.output_dir / "checkpoints" / "last.ckpt")
    test_metrics: dict[str, Any] = {}
    if cfg.test:
        ckpt = (
            "best"
            if cfg.test_ckpt == "best" and trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
            else None
        )
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=trainer.is_global_zero)
        test_metrics = dict(trainer.callback_metrics)
    restore_metric_rows(earlier_rows)
    return fit_metrics, test_metrics


def results_of(
    cfg: DictConfig,
    run: CheckedRun,
    trainer: pl.Trainer,
    model: Any,
    datamodule: Any,
    drloc_callbacks: list[Any],
    lambda_drloc: float,
    init_report: dict[str, list[str]] | None,
    fit_metrics: dict[str, Any],
    test_metrics: dict[str, Any],
) -> dict[str, Any]:
    """What a finished run records in results.json of its config, DRLoc objective, sizes and metrics."""
    best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    face = drloc_face(model, drloc_callbacks)
    sizes = parameter_counts(model, drloc_callbacks)  # the callback builds its head at fit's setup: count it now
    return {
        "status": "ok",
        "task_name": cfg.task_name,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "seed": cfg.seed,
        "lambda_drloc": float(drloc_callbacks[0].lambda_drloc) if drloc_callbacks else lambda_drloc,
        "drloc_via": "callback" if drloc_callbacks else ("module" if lambda_drloc > 0 else "none"),
        # the options the DRLoc objective ran with (the callback's, or the module's)
        "drloc": face.config.as_dict() if face is not None else None,
        "module": f"{type(model).__module__}.{type(model).__qualname__}",
        "init_from": run.init_from,
        "init_from_loaded": None if init_report is None else len(init_report["loaded"]),
        "train_size": datamodule.train_size,
        # which split test_acc1 was measured on ("val" when the data has no test split) and the bad files skipped
        "test_split": getattr(datamodule, "subset_info", {}).get("test_split"),
        "skipped_files": getattr(datamodule, "subset_info", {}).get("skipped_files"),
        "img_size": cfg.data.img_size,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "val_acc1": metric(fit_metrics, "val/acc1"),
        "val_acc5": metric(fit_metrics, "val/acc5"),
        "best_val_acc1": float(best) if best is not None else None,
        "test_acc1": metric(test_metrics, "test/acc1"),
        "test_acc5": metric(test_metrics, "test/acc5"),
        "test_ckpt": cfg.test_ckpt,
        **sizes,
        "lr": float(model.hparams["lr"]) if "lr" in model.hparams else None,
        # the head's task: its grid, chance L1 and the last epoch's training DRLoc loss / chance
        **task_record(face.loss if face is not None else None, metric(fit_metrics, "train/drloc_epoch")),
    }


def stopped_by_signal(
    cfg: DictConfig, trainer: pl.Trainer, interrupt: InterruptCheckpoint, output_dir: Path, start: float
) -> RunInterrupted:
    """``results.json`` marked interrupted (rank 0), and the one paragraph that says how to resume."""
    record = {
        "status": "interrupted",
        "signal": interrupt.signal,
        "task_name": cfg.task_name,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "seed": cfg.seed,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "checkpoint": None if interrupt.saved is None else str(interrupt.saved),
        "wall_time_s": time.perf_counter() - start,
        "output_dir": str(output_dir),
    }
    if trainer.is_global_zero:
        write_results(output_dir, record)
    if interrupt.saved is None:
        how = "No step had finished, so there is nothing to resume: run the command again."
    else:
        how = (
            f"A resumable checkpoint is at {interrupt.saved}; continue the run in place with the same command plus "
            f"ckpt_path=last hydra.run.dir={output_dir}"
        )
    return RunInterrupted(
        f"{interrupt.signal} stopped training at epoch {trainer.current_epoch}, step {trainer.global_step}; "
        f"results.json is marked interrupted. {how}",
        interrupt.signal or "SIGTERM",
    )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> float | None:
    """One job; returns the sweep objective (best val/acc1, else the last val/acc1) for Optuna.

    In a multirun a failing or non-finite job writes ``results.json`` with status "failed" and the
    error, and returns None (Optuna records a failed trial), so the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        results = train(cfg)
        return results["best_val_acc1"] if results["best_val_acc1"] is not None else results["val_acc1"]
    return _sweep_job(cfg)


def _sweep_job(cfg: DictConfig) -> float | None:
    import math
    import traceback

    output_dir = Path(cfg.paths.output_dir)
    had_results = (output_dir / "results.json").exists()
    try:
        results = train(cfg)
        bad = non_finite_metrics(results, output_dir)
        objective = results["best_val_acc1"] if results["best_val_acc1"] is not None else results["val_acc1"]
        if not bad and (objective is None or math.isfinite(objective)):
            return objective
        record = {
            **results,
            "status": "failed",
            "error": f"non-finite final metrics: {', '.join(bad) or f'objective={objective}'}",
        }
        log.error("job failed: %s", record["error"])
    except Exception as err:
        log.error("job failed: %s: %s", type(err).__name__, err, exc_info=not isinstance(err, (UserError, RunStopped)))
        if had_results:  # refused to overwrite an earlier run's results: keep them
            return None
        record = {
            "status": "failed",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
            "output_dir": str(output_dir),
        }
        for key, path in (
            ("task_name", "task_name"),
            ("model", "model.name"),
            ("data", "data.name"),
            ("seed", "seed"),
            ("lambda_drloc", "drloc.lambda_drloc"),
        ):
            try:
                record[key] = OmegaConf.select(cfg, path, throw_on_resolution_failure=False)
            except Exception:
                record[key] = None
    if rank_zero_only.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        if not (output_dir / ".hydra").exists():  # the sweep report finds its jobs by .hydra/overrides.yaml
            write_hydra_files(output_dir, cfg)
        write_results(output_dir, record)
    return None


def main() -> None:
    """Console entry point (``vt-drloc-train`` / ``python -m vt_drloc.train``)."""
    run_cli(_hydra_main)


if __name__ == "__main__":
    main()
