"""``DrLocModule``: a LightningModule that trains any timm classifier with the DRLoc loss.

Written once as :class:`DrLocModuleBase` and built for each Lightning package:
``vt_drloc.DrLocModule`` (``pytorch_lightning``) and ``vt_drloc.lightning.DrLocModule``
(``lightning.pytorch``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from vt_drloc.base.files import EARLIER_DEFAULTS
from vt_drloc.base.lightning_api import PYTORCH_LIGHTNING
from vt_drloc.core import DrLocLoss
from vt_drloc.core.errors import DrLocConfigError
from vt_drloc.core.stages import MultiScaleDrLocLoss, StageCapture, StageGrid, probe_stage_grids
from vt_drloc.core.tap import GridInfo, probe_grid, tap_grid, zero_batch
from vt_drloc.data.info import data_info_of
from vt_drloc.faces.objective import DrLocConfig, DrLocObjective, log_step, plain, warn_renamed
from vt_drloc.faces.optim import build_optimizer, optimizer_spec, warmup_cosine_factor, weight_decay_groups

# vt_drloc 0.2 argument -> the learning rate's option (warmup_epochs was the LR's here, λ's in DrLocConfig)
LR_RENAMED = {"warmup_epochs": "lr_warmup_epochs", "min_lr": "lr_min", "warmup_prefix": "lr_warmup_prefix"}

__all__ = ["DrLocModule", "DrLocModuleBase", "classification_loss", "warmup_cosine_factor", "weight_decay_groups"]


def classification_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy for hard labels (B,) with label smoothing, or soft targets (B, K) from mixup/cutmix."""
    if targets.is_floating_point() and targets.dim() == 2:
        return F.cross_entropy(logits.float(), targets.float())  # class probabilities (already smoothed)
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


class DrLocModuleBase:
    """A timm classifier trained with cross-entropy + λ·L_drloc, both from one backbone forward.

    The backbone is ``timm.create_model(model_name, num_classes=num_classes, **model_kwargs)``;
    the name and kwargs (not the module) are saved as hyper-parameters, so
    ``DrLocModule.load_from_checkpoint(path)`` rebuilds it. The final token grid is read by
    :func:`vt_drloc.core.tap.tap_grid` from the same forward pass that yields the logits.

    Args:
        model_name: any timm model whose last stage is a spatial grid (ViT, DeiT, Swin, CvT, ...).
        num_classes: classes of the task.
        lambda_drloc: λ (paper: 0.5 Swin-T, 0.1 CvT-13 / T2T-ViT-14). ``0`` builds no head and
            trains exactly like a plain timm loop.
        model_kwargs: extra ``timm.create_model`` arguments (``img_size``, ``patch_size``,
            ``drop_path_rate``, ...).
        drloc: the DRLoc options, a :class:`~vt_drloc.faces.objective.DrLocConfig` or a mapping of its
            fields (``mode``, ``num_pairs``, ``target``, ``hidden_dims``, ``head_init``,
            ``class_head``, ``pool_target``, ``tap_norm``, ``schedule``, ``lambda_warmup_epochs``,
            ``lambda_decay_epochs``, ``interval``, ``seed``: the keys of ``conf/drloc``). The same fields
            may be given as keyword arguments (``DrLocModule(..., schedule="constant")``), as to
            :class:`~vt_drloc.faces.callback.DrLocCallback`. Older names are still accepted, with a warning.
        lr, weight_decay, lr_warmup_epochs, lr_min: per-step linear warm-up and cosine decay to
            ``lr_min``; weight decay on weights only (not norms, biases, position embeddings).
        optimizer: the optimizer class and its other settings: ``None`` (AdamW with ``betas``), a
            mapping ``{"_target_": "torch.optim.SGD", "momentum": 0.9}``, a ``functools.partial``
            of the class (Hydra's ``_partial_: true``, as ``conf/optim`` builds it) or the class;
            see :func:`vt_drloc.faces.optim.optimizer_spec`.
        betas: AdamW's, used when ``optimizer`` is ``None``.
        lr_decay_epochs: the epoch the cosine reaches ``lr_min`` (``None`` = ``max_epochs``; the
            released runs: 300 with 100 trained).
        lr_warmup_prefix: ``True`` (default): the cosine starts after the warm-up; ``False``: it is
            laid out from step 0 (timm's and the released code's default); see
            :func:`warmup_cosine_factor`.
        label_smoothing: for hard labels; soft (mixup/cutmix) targets are used as given.
        input_size: (H, W) to probe the grid with; defaults to the model's own input size.

    Reference: Liu et al., "Efficient Training of Visual Transformers with Small Datasets",
    NeurIPS 2021.

    >>> module = DrLocModule("vit_tiny_patch16_224", num_classes=10, lambda_drloc=0.1,
    ...                      model_kwargs={"img_size": 32, "patch_size": 4, "depth": 2})
    >>> module.grid_info.hw
    (8, 8)
    """

    def __init__(
        self,
        model_name: str,
        num_classes: int,
        lambda_drloc: float | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        drloc: DrLocConfig | Mapping[str, Any] | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.05,
        lr_warmup_epochs: float = 0,
        lr_min: float = 1e-6,
        betas: Sequence[float] = (0.9, 0.999),
        label_smoothing: float = 0.1,
        input_size: Sequence[int] | int | None = None,
        lr_decay_epochs: float | None = None,
        lr_warmup_prefix: bool = True,
        optimizer: Any = None,
        **drloc_options: Any,
    ):
        super().__init__()
        # vt_drloc <= 0.2 (and its checkpoints' hyper-parameters) named the learning rate's options without lr_
        for old, new in LR_RENAMED.items():
            if old in drloc_options:
                warn_renamed(old, new, "DrLocModule argument")
                if new == "lr_warmup_epochs":
                    lr_warmup_epochs = drloc_options.pop(old)
                elif new == "lr_min":
                    lr_min = drloc_options.pop(old)
                else:
                    lr_warmup_prefix = drloc_options.pop(old)
        model_kwargs = dict(plain(model_kwargs) or {})
        input_size = plain(input_size)
        betas = tuple(plain(betas))
        if lambda_drloc is not None:
            drloc_options["lambda_drloc"] = lambda_drloc
        config = DrLocConfig.build(drloc, **drloc_options)
        self._check_args(model_name, num_classes, lr, weight_decay, lr_warmup_epochs, lr_min, label_smoothing)
        optimizer = optimizer_spec(plain(optimizer), betas)
        if lr_decay_epochs is not None and not lr_decay_epochs > 0:
            raise DrLocConfigError(
                f"lr_decay_epochs={lr_decay_epochs} must be > 0 (the epoch the cosine reaches lr_min), or None for "
                "max_epochs"
            )
        self.save_hyperparameters(
            {
                "model_name": model_name,
                "num_classes": num_classes,
                "lambda_drloc": config.lambda_drloc,
                "model_kwargs": model_kwargs,
                "drloc": config.as_dict(),
                "lr": lr,
                "weight_decay": weight_decay,
                "lr_warmup_epochs": lr_warmup_epochs,
                "lr_min": lr_min,
                "betas": list(betas),
                "label_smoothing": label_smoothing,
                "input_size": input_size,
                "lr_decay_epochs": lr_decay_epochs,
                "lr_warmup_prefix": lr_warmup_prefix,
                "optimizer": optimizer,
            }
        )

        self.model = timm.create_model(model_name, num_classes=num_classes, **model_kwargs)
        self.objective = DrLocObjective(config)
        self.grid_info: GridInfo | None = None
        self.drloc: DrLocLoss | MultiScaleDrLocLoss | None = None
        self.stage_grids: list[StageGrid] = []
        self.final_is_stage = True
        self.stage_capture = StageCapture()
        if config.lambda_drloc > 0:
            if input_size is None and "img_size" in model_kwargs:
                input_size = model_kwargs["img_size"]
            self.grid_info = probe_grid(self.model, input_size, name=model_name, tap_norm=config.tap_norm)
            # multi-scale (config.stages): the earlier stages' grids, read by pre-hooks in the same forward
            x = zero_batch(self.model, input_size)
            self.stage_grids, self.final_is_stage = probe_stage_grids(
                self.model, x, self.grid_info.hw, config.stages, model_name
            )
            specs = [(s.reading.channels, (s.reading.height, s.reading.width)) for s in self.stage_grids]
            specs += [(self.grid_info.channels, self.grid_info.hw)] if self.final_is_stage else []
            self.drloc = self.objective.build_losses(specs)
            self.stage_capture.attach(self.model, self.stage_grids)
        top_k = min(5, num_classes)
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
        # class names and eval preprocessing (vt_drloc.data.info), saved in checkpoints for export / predict
        self.data_info: dict[str, Any] = {}
        self._batch_idx = 0  # the training batch λ is at (current_lambda)

    # the same public names as DrLocCallback's: config, loss, lambda_drloc, current_lambda, num_head_params
    @property
    def config(self) -> DrLocConfig:
        """The DRLoc options this module trains with."""
        return self.objective.config

    @property
    def drloc_config(self) -> DrLocConfig:
        """Deprecated name of :attr:`config` (the callback's name), kept until vt_drloc 0.3."""
        warnings.warn("DrLocModule.drloc_config is now DrLocModule.config", DeprecationWarning, stacklevel=2)
        return self.objective.config

    @property
    def loss(self) -> DrLocLoss | MultiScaleDrLocLoss | None:
        """The DRLoc loss (owning the head), or None without DRLoc; registered as the submodule ``drloc``,
        the name its weights have in checkpoints."""
        return self.drloc

    @property
    def lambda_drloc(self) -> float:
        return self.objective.config.lambda_drloc

    @staticmethod
    def _check_args(model_name, num_classes, lr, weight_decay, lr_warmup_epochs, lr_min, label_smoothing) -> None:
        if not timm.is_model(model_name.split(".")[0]):
            import difflib

            close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise DrLocConfigError(f"model_name={model_name!r} is not a timm model.{hint} See timm.list_models().")
        checks = [
            (num_classes >= 1, f"num_classes={num_classes} must be >= 1"),
            (lr > 0, f"lr={lr} must be > 0"),
            (weight_decay >= 0, f"weight_decay={weight_decay} must be >= 0"),
            (lr_warmup_epochs >= 0, f"lr_warmup_epochs={lr_warmup_epochs} must be >= 0"),
            (0 <= lr_min <= lr, f"lr_min={lr_min} must lie in [0, lr={lr}]"),
            (0 <= label_smoothing < 1, f"label_smoothing={label_smoothing} must lie in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise DrLocConfigError(message)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        self.data_info = data_info_of(datamodule) or self.data_info

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def forward_with_grid(self, x: Tensor) -> tuple[Tensor, Tensor | list[Tensor] | None]:
        """Logits and the final grid (None without DRLoc; multi-scale: the stages' grids, finest first) from a
        single backbone forward."""
        if self.grid_info is None:
            return self.model(x), None
        self.stage_capture.start()
        features, grid = tap_grid(self.model, x, self.grid_info)
        logits = self.model.forward_head(features)
        if not self.stage_grids:
            return logits, grid
        stages = self.stage_capture.grids()
        if stages is None:  # a no-grad forward: the stages' inputs are not kept
            return logits, None
        return logits, stages + ([grid] if self.final_is_stage else [])

    # ------------------------------------------------------------------ parameters
    @property
    def num_backbone_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def num_head_params(self) -> int:
        return 0 if self.drloc is None else sum(p.numel() for p in self.drloc.parameters())

    # ------------------------------------------------------------------ λ
    @property
    def current_lambda(self) -> float:
        """λ in effect for the current training step (0 without DRLoc)."""
        return 0.0 if self.drloc is None else self.objective.current_lambda(self._trainer, self._batch_idx)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        self._batch_idx = batch_idx
        logits, grid = self.forward_with_grid(x)
        ce = classification_loss(logits, y, self.hparams.label_smoothing)
        loss = ce
        self.loss_terms = {"ce": ce.detach()}  # read by vt_drloc.app.reliability.NonFiniteLossGuard
        if grid is not None:
            step = self.objective.step(grid, self._trainer, batch_idx)
            log_step(self, step)
            loss = ce + step.lam * step.drloc
            self.loss_terms["drloc"] = step.drloc.detach()
        self.log("train/ce", ce, on_step=True, on_epoch=True)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        if self._trainer is not None and self._trainer.optimizers:
            self.log("lr", self._trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _eval_step(self, batch: Any, stage: str) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = classification_loss(logits, y)
        acc1, acc5 = (self.val_acc1, self.val_acc5) if stage == "val" else (self.test_acc1, self.test_acc5)
        acc1(logits, y)
        acc5(logits, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True)
        self.log(f"{stage}/acc1", acc1, on_epoch=True, prog_bar=stage == "val")
        self.log(f"{stage}/acc5", acc5, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        modules = [self.model] + ([self.drloc] if self.drloc is not None else [])
        # checkpoints of vt_drloc <= 0.2 carry no optimizer: AdamW with their betas, as they trained
        spec = hp.get("optimizer") or optimizer_spec(None, hp.betas)
        head_decay = self.config.head_weight_decay
        if self.drloc is not None and head_decay is not None:  # the head's own weight decay
            groups = weight_decay_groups([self.model], hp.weight_decay) + weight_decay_groups([self.drloc], head_decay)
        else:
            groups = weight_decay_groups(modules, hp.weight_decay)
        optimizer = build_optimizer(plain(spec), groups, lr=hp.lr)
        train_steps = max(1, int(self.trainer.estimated_stepping_batches))
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        steps_per_epoch = train_steps / max_epochs
        warmup_steps = int(round(hp.lr_warmup_epochs * steps_per_epoch))
        decay_epochs = hp.lr_decay_epochs
        # the cosine's horizon may lie past the end of training (the released runs: 300 of 100 epochs)
        total_steps = train_steps if decay_epochs is None else max(1, int(round(decay_epochs * steps_per_epoch)))
        min_factor = hp.lr_min / hp.lr
        warmup_prefix = bool(hp.lr_warmup_prefix)

        def factor(step: int) -> float:
            return warmup_cosine_factor(step, total_steps, warmup_steps, min_factor, warmup_prefix)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    # the objective's keys, prefixed "drloc_", at the top level of the checkpoint (as in vt_drloc 0.1)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.update({f"drloc_{key}": value for key, value in self.objective.checkpoint_state().items()})
        checkpoint["data_info"] = self.data_info

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_options_the_checkpoint_predates(checkpoint.get("hyper_parameters"))
        self.data_info = dict(checkpoint.get("data_info") or {})
        self.objective.load_checkpoint_state(
            {key[len("drloc_") :]: value for key, value in checkpoint.items() if key.startswith("drloc_")}
        )

    def _check_options_the_checkpoint_predates(self, hparams: Mapping[str, Any] | None) -> None:
        """A checkpoint whose hyper-parameters lack an option of :data:`EARLIER_DEFAULTS` was trained
        with that option's earlier behaviour. Loading it under today's default would resume on
        another grid (``tap_norm``) or fail on head keys (``class_head``), so say which and how to
        keep the earlier behaviour; ``head_init`` is moot once weights are loaded."""
        if hparams is None or self.drloc is None:
            return
        recorded = {**dict(hparams), **dict(hparams.get("drloc") or {})}
        config = self.config
        keys = (
            ("tap_norm", "class_head") if config.mode in ("ce", "cbr") else ("tap_norm",)
        )  # only ce/cbr have a class head
        differ = {
            key: EARLIER_DEFAULTS[key]
            for key in keys
            if key not in recorded and getattr(config, key) != EARLIER_DEFAULTS[key]
        }
        if not differ:
            return
        fix = ", ".join(f"{key}={earlier!r}" for key, earlier in differ.items())
        how = (
            f"DrLocModule.load_from_checkpoint(path, {fix}) (or DrLocModule(..., {fix}) before "
            "Trainer.fit(ckpt_path=...))"
        )
        if "class_head" in differ:
            raise DrLocConfigError(
                f"this checkpoint predates the option class_head and holds the earlier fused '{config.mode}' head, "
                f"which class_head={config.class_head!r} cannot load; load it with {how}"
            )
        if "tap_norm" in differ:
            warnings.warn(
                f"this checkpoint predates the option tap_norm: its run read the grid after the backbone's final "
                f"norm (tap_norm='post'); DRLoc training from it now reads it with tap_norm={config.tap_norm!r}. "
                f"To continue as it was trained, load it with {how}",
                UserWarning,
                stacklevel=2,
            )


class DrLocModule(DrLocModuleBase, PYTORCH_LIGHTNING.LightningModule):
    __doc__ = DrLocModuleBase.__doc__
