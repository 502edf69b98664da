"""DrLocCallback under DDP: 2 CPU processes (gloo). Run as ``python ddp_callback.py OUT_DIR``.

Lightning re-launches this script once per extra rank, so it must not run inside pytest. Each
rank seeds its RNG differently (so the module and the DRLoc head start out different on each
rank until DDP broadcasts rank 0's weights), sees its own shard of the data and samples its own
cell pairs; head weights that are still identical after several steps show that the head's
gradients were all-reduced by DDP. Each rank writes ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from callback_models import Classifier, random_loader
from torch.nn.parallel import DistributedDataParallel

from vt_drloc.faces.callback import DrLocCallback


class DDPClassifier(Classifier):
    """Records whether training_step (and so the DRLoc wrapper around it) ran inside DDP's forward."""

    inside_ddp_forward: list[bool] = []

    def training_step(self, batch, batch_idx):
        inside = any(isinstance(f.frame.f_locals.get("self"), DistributedDataParallel) for f in inspect.stack())
        self.inside_ddp_forward.append(inside)
        return super().training_step(batch, batch_idx)


class Snapshot(pl.Callback):
    def __init__(self, drloc: DrLocCallback):
        self.drloc = drloc
        self.wrapper = ""
        self.head_at_start: dict = {}
        self.head_at_setup: dict = {}
        self.head_grad_norm: list[float] = []

    def setup(self, trainer, pl_module, stage):  # runs after DrLocCallback.setup: head built, DDP not yet
        self.head_at_setup = {k: v.detach().clone() for k, v in self.drloc.loss.state_dict().items()}

    def on_train_start(self, trainer, pl_module):
        self.wrapper = type(trainer.strategy.model).__name__
        self.head_at_start = {k: v.detach().clone() for k, v in self.drloc.loss.state_dict().items()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.head_grad_norm.append(float(sum(p.grad.norm() for p in self.drloc.loss.parameters())))


def main(out: Path) -> None:
    rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # deliberately different initial weights on each rank
    module = DDPClassifier("timm")
    drloc = DrLocCallback(0.5, lambda_schedule="constant", head_hidden_dims=[64], sample_size=16)
    snap = Snapshot(drloc)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[drloc, snap],
    )
    trainer.fit(module, random_loader(n=48, batch=8))
    torch.save(
        {
            "rank": trainer.global_rank,
            "wrapper": snap.wrapper,
            "inside_ddp_forward": module.inside_ddp_forward,
            "head_at_setup": snap.head_at_setup,
            "head_at_start": snap.head_at_start,
            "head": {k: v.detach().clone() for k, v in drloc.loss.state_dict().items()},
            "head_grad_norm": snap.head_grad_norm,
            "backbone": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "task_losses": module.task_losses,
            "restored": not hasattr(module, "_drloc_loss") and "training_step" not in module.__dict__,
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
