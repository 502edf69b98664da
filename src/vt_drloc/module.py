"""``DrLocModule``: a LightningModule that trains any timm classifier with the DRLoc loss."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from timm.optim import param_groups_weight_decay
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from vt_drloc.drloc import DrLocLoss, drloc_lambda, epoch_progress, pair_generator, resolve_hidden_dims
from vt_drloc.tap import GridInfo, check_tap_norm, probe_grid, tap_grid


def classification_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy for hard labels (B,) with label smoothing, or soft targets (B, K) from mixup/cutmix."""
    if targets.is_floating_point() and targets.dim() == 2:
        return F.cross_entropy(logits.float(), targets.float())  # class probabilities (already smoothed)
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_factor: float, warmup_prefix: bool = True) -> float:
    """LR multiplier: linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine to ``min_factor``
    at ``total_steps``.

    ``warmup_prefix=True`` (default): the cosine spans the steps after the warm-up.
    ``warmup_prefix=False``: the cosine is laid out from step 0, so the warm-up covers its first
    part, as timm's ``CosineLRScheduler`` (default ``warmup_prefix=False``) in the released code.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    start = warmup_steps if warmup_prefix else 0
    progress = min(1.0, (step - start) / max(1, total_steps - start))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def weight_decay_groups(modules: Sequence[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups over ``modules``: weights decayed; norms, biases and the model's
    ``no_weight_decay()`` names (position embeddings, class tokens, ...) not decayed."""
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for module in modules:
        skip = module.no_weight_decay() if hasattr(module, "no_weight_decay") else set()
        for group in param_groups_weight_decay(module, weight_decay, no_weight_decay_list=skip):
            (decay if group["weight_decay"] > 0 else no_decay).extend(group["params"])
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


class DrLocModule(pl.LightningModule):
    """A timm classifier trained with cross-entropy + λ·L_drloc, both from one backbone forward.

    The backbone is ``timm.create_model(model_name, num_classes=num_classes, **model_kwargs)``;
    the name and kwargs (not the module) are saved as hyper-parameters, so
    ``DrLocModule.load_from_checkpoint(path)`` rebuilds it. The final token grid is read by
    :func:`vt_drloc.tap.tap_grid` from the same forward pass that yields the logits.

    Args:
        model_name: any timm model whose last stage is a spatial grid (ViT, DeiT, Swin, CvT, ...).
        num_classes: classes of the task.
        lambda_drloc: λ (paper: 0.5 Swin-T, 0.1 CvT-13 / T2T-ViT-14). ``0`` builds no head and
            trains exactly like a plain timm loop.
        model_kwargs: extra ``timm.create_model`` arguments (``img_size``, ``patch_size``,
            ``drop_path_rate``, ...).
        drloc_mode, sample_size, drloc_target, head_hidden_dims, grid_size, head_init, class_head:
            see :class:`vt_drloc.drloc.DrLocLoss`.
        tap_norm: ``"pre"`` (default, released Swin-T / ViT) or ``"post"`` (released T2T-ViT): read
            the grid before or after the model's final norm; see :mod:`vt_drloc.tap`.
        lambda_schedule, lambda_warmup_epochs, lambda_decay_epochs: see
            :func:`vt_drloc.drloc.drloc_lambda` (``lambda_decay_epochs`` = the epoch λ reaches 0;
            ``None`` = ``max_epochs``; the released runs: 300 with 100 trained).
        lambda_interval: ``"step"`` (default: λ read at the fractional epoch of every step) or
            ``"epoch"`` (held for the epoch, as the released loop); see
            :func:`vt_drloc.drloc.epoch_progress`.
        lr, weight_decay, warmup_epochs, min_lr, betas: AdamW with per-step linear warm-up and
            cosine decay to ``min_lr``.
        lr_decay_epochs: the epoch the cosine reaches ``min_lr`` (``None`` = ``max_epochs``; the
            released runs: 300 with 100 trained).
        warmup_prefix: ``True`` (default): the cosine starts after the warm-up; ``False``: it is
            laid out from step 0 (timm's and the released code's default); see
            :func:`warmup_cosine_factor`.
        label_smoothing: for hard labels; soft (mixup/cutmix) targets are used as given.
        input_size: (H, W) to probe the grid with; defaults to the model's own input size.
        drloc_seed: seed of the pair sampler (default: derived from the global seed), on the
            training device so no indices are copied from the host.

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
        lambda_drloc: float = 0.1,
        model_kwargs: Mapping[str, Any] | None = None,
        drloc_mode: str = "l1",
        sample_size: int = 64,
        drloc_target: str = "abs",
        head_hidden_dims: Sequence[int] | str = "released",
        grid_size: int | None = 7,
        lambda_schedule: str = "warmup_decay",
        lambda_warmup_epochs: float = 20,
        lr: float = 5e-4,
        weight_decay: float = 0.05,
        warmup_epochs: float = 0,
        min_lr: float = 1e-6,
        betas: Sequence[float] = (0.9, 0.999),
        label_smoothing: float = 0.1,
        input_size: Sequence[int] | int | None = None,
        drloc_seed: int | None = None,
        tap_norm: str = "pre",
        head_init: str = "released",
        class_head: str = "released",
        lambda_decay_epochs: float | None = None,
        lambda_interval: str = "step",
        lr_decay_epochs: float | None = None,
        warmup_prefix: bool = True,
    ):
        super().__init__()
        model_kwargs = dict(_plain(model_kwargs) or {})
        head_hidden_dims = _plain(head_hidden_dims)
        if not isinstance(head_hidden_dims, str):
            head_hidden_dims = list(head_hidden_dims)
        input_size = _plain(input_size)
        betas = tuple(_plain(betas))
        self._check_args(model_name, num_classes, lambda_drloc, lr, weight_decay, warmup_epochs, min_lr, label_smoothing)
        drloc_lambda(lambda_drloc, 0.0, None, lambda_schedule, lambda_warmup_epochs, lambda_decay_epochs)  # validates early
        epoch_progress(0, 0, None, lambda_interval)
        check_tap_norm(tap_norm)
        resolve_hidden_dims(head_hidden_dims)
        if lr_decay_epochs is not None and not lr_decay_epochs > 0:
            raise ValueError(f"lr_decay_epochs={lr_decay_epochs} must be > 0 (the epoch the cosine reaches min_lr), or None for max_epochs")
        self.save_hyperparameters(ignore=())
        self.hparams.model_kwargs = model_kwargs
        self.hparams.head_hidden_dims = head_hidden_dims
        self.hparams.input_size = input_size
        self.hparams.betas = list(betas)

        self.model = timm.create_model(model_name, num_classes=num_classes, **model_kwargs)
        self.grid_info: GridInfo | None = None
        self.drloc: DrLocLoss | None = None
        if lambda_drloc > 0:
            if input_size is None and "img_size" in model_kwargs:
                input_size = model_kwargs["img_size"]
            self.grid_info = probe_grid(self.model, input_size, name=model_name, tap_norm=tap_norm)
            self.drloc = DrLocLoss(
                self.grid_info.channels,
                mode=drloc_mode,
                sample_size=sample_size,
                target=drloc_target,
                hidden_dims=head_hidden_dims,
                grid_size=grid_size,
                grid_hw=self.grid_info.hw,
                head_init=head_init,
                class_head=class_head,
            )
        top_k = min(5, num_classes)
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
        self._generator: torch.Generator | None = None
        self._generator_state: Tensor | None = None
        self._batch_idx = 0

    @staticmethod
    def _check_args(model_name, num_classes, lambda_drloc, lr, weight_decay, warmup_epochs, min_lr, label_smoothing) -> None:
        if not timm.is_model(model_name.split(".")[0]):
            import difflib

            close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ValueError(f"model_name={model_name!r} is not a timm model.{hint} See timm.list_models().")
        checks = [
            (num_classes >= 1, f"num_classes={num_classes} must be >= 1"),
            (math.isfinite(lambda_drloc) and lambda_drloc >= 0, f"lambda_drloc={lambda_drloc} must be >= 0 (0 = baseline without DRLoc)"),
            (lr > 0, f"lr={lr} must be > 0"),
            (weight_decay >= 0, f"weight_decay={weight_decay} must be >= 0"),
            (warmup_epochs >= 0, f"warmup_epochs={warmup_epochs} must be >= 0"),
            (0 <= min_lr <= lr, f"min_lr={min_lr} must lie in [0, lr={lr}]"),
            (0 <= label_smoothing < 1, f"label_smoothing={label_smoothing} must lie in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def forward_with_grid(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Logits and the final grid (None without DRLoc) from a single backbone forward."""
        if self.grid_info is None:
            return self.model(x), None
        features, grid = tap_grid(self.model, x, self.grid_info)
        return self.model.forward_head(features), grid

    # ------------------------------------------------------------------ parameters
    @property
    def num_backbone_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def num_head_params(self) -> int:
        return 0 if self.drloc is None else sum(p.numel() for p in self.drloc.parameters())

    # ------------------------------------------------------------------ λ and sampling
    def _epoch_progress(self) -> float:
        return epoch_progress(
            self.trainer.current_epoch, self._batch_idx, self.trainer.num_training_batches, self.hparams.lambda_interval
        )

    @property
    def current_lambda(self) -> float:
        """λ in effect for the current training step (0 without DRLoc)."""
        if self.drloc is None:
            return 0.0
        hp = self.hparams
        trainer = self._trainer
        decay = hp.lambda_decay_epochs
        if trainer is None:
            return drloc_lambda(hp.lambda_drloc, 0.0, None, hp.lambda_schedule, hp.lambda_warmup_epochs, decay)
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        return drloc_lambda(hp.lambda_drloc, self._epoch_progress(), max_epochs, hp.lambda_schedule, hp.lambda_warmup_epochs, decay)

    def _sampler(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = pair_generator(device, self.hparams.drloc_seed, self.global_rank, self._generator_state)
            self._generator_state = None
        return self._generator

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        self._batch_idx = batch_idx
        logits, grid = self.forward_with_grid(x)
        ce = classification_loss(logits, y, self.hparams.label_smoothing)
        loss = ce
        self.loss_terms = {"ce": ce.detach()}  # read by vt_drloc.reliability.NonFiniteLossGuard
        if grid is not None:
            lam = self.current_lambda
            drloc = self.drloc(grid, generator=self._sampler(grid.device))
            loss = ce + lam * drloc
            self.loss_terms["drloc"] = drloc.detach()
            self.log("train/drloc", drloc, on_step=True, on_epoch=True)
            self.log("train/lambda", lam, on_step=True, on_epoch=False)
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
        optimizer = torch.optim.AdamW(weight_decay_groups(modules, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        train_steps = max(1, int(self.trainer.estimated_stepping_batches))
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        steps_per_epoch = train_steps / max_epochs
        warmup_steps = int(round(hp.warmup_epochs * steps_per_epoch))
        decay_epochs = hp.lr_decay_epochs
        # the cosine's horizon may lie past the end of training (the released runs: 300 of 100 epochs)
        total_steps = train_steps if decay_epochs is None else max(1, int(round(decay_epochs * steps_per_epoch)))
        min_factor = hp.min_lr / hp.lr
        warmup_prefix = bool(hp.warmup_prefix)

        def factor(step: int) -> float:
            return warmup_cosine_factor(step, total_steps, warmup_steps, min_factor, warmup_prefix)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._generator is not None:
            checkpoint["drloc_sampler_state"] = self._generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("drloc_sampler_state")
        if state is not None:
            self._generator_state = state
            self._generator = None
