"""The two faces are symmetric (issue 27): DrLocModule and DrLocCallback take the same DRLoc arguments,
expose the same names (config, loss, lambda_drloc, current_lambda, num_head_params), checkpoint the same
DRLoc state keys, and run one backbone forward per validation batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from vt_drloc import DrLocCallback, DrLocModule
from vt_drloc.faces.objective import DrLocConfig

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from callback_models import VIT, Classifier, random_loader  # noqa: E402

OPTIONS = dict(schedule="adaptive", seed=0, hidden_dims=[16], num_pairs=8, lambda_warmup_epochs=0)


def build(face: str) -> tuple[pl.LightningModule, list[pl.Callback], torch.nn.Module, object]:
    """(the module to fit, the callbacks, the backbone whose forwards count, the DRLoc face)."""
    if face == "module":
        module = DrLocModule("vit_tiny_patch16_224", num_classes=10, lambda_drloc=0.5, model_kwargs=VIT, **OPTIONS)
        return module, [], module.model, module
    callback = DrLocCallback(lambda_drloc=0.5, **OPTIONS)
    module = Classifier()
    return module, [callback], module.net, callback


def fit(tmp_path, module, callbacks, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kwargs,
    )
    trainer.fit(module, random_loader(), random_loader(seed=1))
    return trainer


class CountValidationForwards(pl.Callback):
    """Backbone forwards during each validation batch."""

    def __init__(self, backbone: torch.nn.Module):
        self.per_batch: list[int] = []
        self.calls = 0
        backbone.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def on_validation_batch_start(self, *args, **kwargs):
        self.calls = 0

    def on_validation_batch_end(self, *args, **kwargs):
        self.per_batch.append(self.calls)


@pytest.mark.parametrize("face", ["module", "callback"])
def test_validation_runs_one_backbone_forward_per_batch(face, tmp_path):
    module, callbacks, backbone, _ = build(face)
    counter = CountValidationForwards(backbone)
    fit(tmp_path, module, [*callbacks, counter], num_sanity_val_steps=0)
    assert counter.per_batch == [1, 1]


@pytest.mark.parametrize("face", ["module", "callback"])
def test_both_faces_expose_the_same_names_and_checkpoint_the_same_drloc_state(face, tmp_path):
    module, callbacks, _, drloc_face = build(face)
    assert drloc_face.config == DrLocConfig.build(lambda_drloc=0.5, **OPTIONS)
    assert drloc_face.lambda_drloc == 0.5 and drloc_face.current_lambda == 0.5  # before fit: the start, no warm-up
    trainer = fit(tmp_path, module, callbacks)
    assert drloc_face.loss is not None
    assert drloc_face.num_head_params == sum(p.numel() for p in drloc_face.loss.parameters())
    assert drloc_face.current_lambda == 0.5  # held at its peak until the head learns (adaptive)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    if face == "module":  # the objective's state, prefixed drloc_, at the top level
        state = {k.removeprefix("drloc_"): v for k, v in checkpoint.items() if k.startswith("drloc_")}
    else:  # the objective's state in the callback's, beside the head it owns
        state = {
            k: v for k, v in checkpoint["callbacks"]["DrLocCallback"].items() if k not in ("head", "head_optimizer")
        }
    assert sorted(state) == ["sampler_state", "schedule_state"]
    assert state["schedule_state"]["task_ratio"] is not None
