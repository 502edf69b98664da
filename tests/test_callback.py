"""DrLocCallback: DRLoc added to an unmodified user LightningModule by a callback.

User modules live in ``tests/scripts/callback_models.py`` (shared with the DDP script, which runs
in a subprocess so Lightning's re-launch of the script does not re-run pytest).
"""

from __future__ import annotations

import copy
import inspect
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy

from vt_drloc import DrLocModule
from vt_drloc.core.errors import DrLocConfigError
from vt_drloc.core.tap import BackboneLookupError, GridTapError
from vt_drloc.faces.callback import HEAD_ATTR, DrLocCallback

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "scripts"
sys.path.insert(0, str(SCRIPTS))
from callback_models import VIT, Classifier, random_loader  # noqa: E402

FAST = dict(lambda_schedule="constant", drloc_seed=0, head_hidden_dims=[64], num_pairs=16)


def callback(kind: str = "timm", lambda_drloc: float = 0.5, **kwargs) -> DrLocCallback:
    if kind == "hand":
        kwargs.setdefault("tap", "net.blocks")
        kwargs.setdefault("input_size", 32)
    return DrLocCallback(lambda_drloc, **{**FAST, **kwargs})


def trainer(tmp_path, callbacks=(), **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(callbacks=list(callbacks), **defaults)


def head_state(cb: DrLocCallback) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in cb.loss.state_dict().items()}


class Recorder(pl.Callback):
    """What a step returned, the logged DRLoc value, the first step's gradients, the optimizer."""

    def __init__(self, drloc: DrLocCallback | None = None):
        self.drloc = drloc
        self.head_at_start: dict = {}
        self.losses: list[float] = []
        self.drloc_values: list[float] = []
        self.first_grads: dict[str, torch.Tensor] = {}
        self.head_lrs: list[tuple[float, ...]] = []

    def on_train_start(self, trainer, pl_module):
        if self.drloc is not None:
            self.head_at_start = head_state(self.drloc)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())
        if "train/drloc_step" in trainer.callback_metrics:
            self.drloc_values.append(trainer.callback_metrics["train/drloc_step"].item())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not self.first_grads:
            self.first_grads = {n: p.grad.clone() for n, p in pl_module.net.named_parameters() if p.grad is not None}
        self.head_lrs.append(tuple(g["lr"] for g in optimizer.param_groups))


def assert_module_left_as_it_was(module: pl.LightningModule, cb: DrLocCallback) -> None:
    assert not hasattr(module, HEAD_ATTR) and HEAD_ATTR not in module._modules
    assert "training_step" not in module.__dict__ and "forward_features" not in module.net.__dict__
    assert not module._state_dict_hooks and not module._load_state_dict_post_hooks
    assert all(not m._forward_hooks for m in module.modules())
    assert all(HEAD_ATTR not in k for k in module.state_dict())
    assert cb.loss is not None  # the callback keeps the head for its state_dict / a later fit


# ---------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("kind", ["timm", "hand"])
def test_loss_includes_drloc_head_trains_and_module_is_restored(tmp_path, kind):
    torch.manual_seed(0)
    module = Classifier(kind, return_dict=kind == "hand")  # the hand-written one returns a dict
    plain = copy.deepcopy(module)
    cb = callback(kind)
    rec = Recorder(cb)
    with pytest.warns(UserWarning, match="new parameter group"):
        trainer(tmp_path, [cb, rec]).fit(module, random_loader())

    # the loss Lightning back-propagated is the user's loss + λ·L_drloc
    assert len(rec.losses) == len(rec.drloc_values) == 2
    for total, task, drloc in zip(rec.losses, module.task_losses, rec.drloc_values):
        assert drloc > 0 and total == pytest.approx(task + 0.5 * drloc, rel=1e-5)
    # the head learned, and it sits in the optimizer once, in groups scheduled like group 0
    assert any(not torch.equal(rec.head_at_start[k], v) for k, v in head_state(cb).items())
    assert [len(set(lrs)) for lrs in rec.head_lrs] == [1, 1]  # LambdaLR drives the head groups too
    assert rec.head_lrs[1][0] < rec.head_lrs[0][0]

    # the same step without the callback: the user's loss only, other backbone gradients
    rec_plain = Recorder()
    trainer(tmp_path, [rec_plain]).fit(plain, random_loader())
    assert rec_plain.losses == pytest.approx(plain.task_losses)
    assert rec_plain.losses[0] == pytest.approx(module.task_losses[0])  # same weights, same batch
    changed = [n for n, g in rec.first_grads.items() if not torch.allclose(g, rec_plain.first_grads[n])]
    assert changed and all(not n.startswith("head.") for n in changed)  # the classifier is off the DRLoc path
    assert_module_left_as_it_was(module, cb)
    assert set(module.state_dict()) == set(plain.state_dict())


@pytest.mark.parametrize("tap_norm", ["pre", "post"])
def test_tap_norm_reads_the_backbone_grid_before_or_after_its_final_norm(tmp_path, monkeypatch, tap_norm):
    """The grid the DRLoc loss receives in the first step is the timm model's last-stage tokens before
    (the released Swin-T / ViT) or after (T2T-ViT) its final LayerNorm; the two differ."""
    from vt_drloc.core import DrLocLoss

    torch.manual_seed(0)
    module = Classifier("timm")
    start = copy.deepcopy(module.net).eval()
    seen: list[torch.Tensor] = []
    forward = DrLocLoss.forward

    def recording_forward(self, grid, generator=None):
        seen.append(grid.detach().clone())
        return forward(self, grid, generator)

    monkeypatch.setattr(DrLocLoss, "forward", recording_forward)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer(tmp_path, [callback(tap_norm=tap_norm)], max_steps=1).fit(module, random_loader())
    x = next(iter(random_loader()))[0]
    with torch.no_grad():
        grids = {norm: start.forward_intermediates(x, indices=1, norm=norm)[1][-1] for norm in (False, True)}
    assert not torch.allclose(grids[False], grids[True], atol=1e-3)
    assert len(seen) == 1 and torch.allclose(seen[0], grids[tap_norm == "post"], atol=1e-5)


def test_optimizer_holds_each_parameter_once(tmp_path):
    module = Classifier("timm")
    cb = callback()
    seen = {}

    class Check(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            optimizer = trainer.optimizers[0]
            ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
            seen.update(ids=ids, all=[id(p) for p in pl_module.parameters()], groups=optimizer.param_groups)

    with pytest.warns(UserWarning, match="LambdaLR"):
        trainer(tmp_path, [cb, Check()], max_steps=1).fit(module, random_loader(n=8))
    assert len(seen["ids"]) == len(set(seen["ids"])) == len(seen["all"]) and set(seen["ids"]) == set(seen["all"])
    user, decayed, not_decayed = seen["groups"]
    assert decayed["weight_decay"] == user["weight_decay"] == 0.05 and not_decayed["weight_decay"] == 0.0
    assert decayed["initial_lr"] == user["initial_lr"] == 1e-3 and decayed["betas"] == user["betas"]
    assert {id(p) for p in decayed["params"] + not_decayed["params"]} == {id(p) for p in cb.loss.parameters()}


def test_optimizer_over_all_parameters_is_left_alone(tmp_path):
    class AllParams(Classifier):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)  # includes the head: attached in setup

    module = AllParams("timm")
    cb = callback()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*new parameter group.*")
        t = trainer(tmp_path, [cb], max_steps=1)
        t.fit(module, random_loader(n=8))
    assert len(t.optimizers[0].param_groups) == 1


def test_validation_and_predict_are_untouched(tmp_path):
    torch.manual_seed(1)
    module = Classifier("timm")
    cb = callback()
    val_losses = []

    class EvalCheck(pl.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            with torch.no_grad():
                val_losses.append((trainer.callback_metrics, F.cross_entropy(pl_module(batch[0]), batch[1]).item()))
            assert not cb.capture.active

    t = trainer(tmp_path, [cb, EvalCheck()], limit_val_batches=1, val_check_interval=2, num_sanity_val_steps=0)
    t.fit(module, random_loader(), random_loader(n=8, seed=3))
    assert t.callback_metrics["val/loss"].item() == pytest.approx(val_losses[-1][1], rel=1e-5)
    preds = torch.cat(t.predict(module, random_loader(n=8, seed=3)))  # callback still in the trainer
    assert not hasattr(module, HEAD_ATTR)
    module.eval()
    with torch.no_grad():
        assert torch.equal(preds, module(next(iter(random_loader(n=8, seed=3)))[0]))


@pytest.mark.parametrize(
    "setting", [dict(accumulate_grad_batches=2), dict(precision="bf16-mixed")], ids=["accumulate2", "bf16"]
)
def test_accumulation_and_bf16_mixed(tmp_path, setting):
    module = Classifier("timm")
    cb = callback()
    rec = Recorder(cb)
    seen = []
    t = trainer(tmp_path, [cb, rec], max_steps=-1, max_epochs=1, **setting)
    handle = None

    class Spy(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            nonlocal handle
            handle = cb.loss.head.register_forward_hook(
                lambda m, args, out: seen.append((out.dtype, torch.is_autocast_enabled("cpu")))
            )

    t.callbacks.append(Spy())
    t.fit(module, random_loader(n=32, batch=8))
    handle.remove()
    assert len(seen) == 4 and all(torch.isfinite(torch.tensor(rec.drloc_values)))
    assert any(not torch.equal(rec.head_at_start[k], v) for k, v in head_state(cb).items())
    if "accumulate_grad_batches" in setting:
        assert t.global_step == 2 and len(rec.head_lrs) == 2
    else:  # the DRLoc head ran under the same autocast as the user's forward (its output is bf16)
        assert t.global_step == 4 and seen == [(torch.bfloat16, True)] * 4


# ---------------------------------------------------------------------------------------- checkpoints
def test_checkpoints_resume_the_head_and_load_into_the_users_class(tmp_path):
    torch.manual_seed(0)
    cb = callback()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    t = trainer(tmp_path, [cb, ckpt], enable_checkpointing=True)
    t.fit(Classifier("timm"), random_loader())
    saved = head_state(cb)
    last = tmp_path / "ckpt" / "last.ckpt"
    loaded = torch.load(last, weights_only=True)
    assert all(HEAD_ATTR not in k for k in loaded["state_dict"])
    stored = loaded["callbacks"]["DrLocCallback"]
    assert set(stored) == {"head", "sampler_state", "head_optimizer"}
    assert all(torch.equal(stored["head"][k], v) for k, v in saved.items())
    # the trainer's optimizer state holds the user's group only; the head's two groups sit in the callback's state
    assert len(loaded["optimizer_states"][0]["param_groups"]) == 1
    assert len(stored["head_optimizer"]["param_groups"]) == 2
    assert (
        len(loaded["lr_schedulers"][0]["base_lrs"]) == 1
        and len(stored["head_optimizer"]["lr_schedulers"][0]["base_lrs"]) == 2
    )

    # the user's class loads it strictly, without the callback; so does a weights-only checkpoint
    restored = Classifier.load_from_checkpoint(last, strict=True)
    assert set(restored.state_dict()) == set(loaded["state_dict"])
    t.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
    Classifier.load_from_checkpoint(tmp_path / "weights.ckpt", strict=True)

    # resuming with a new callback restores the head and the head's optimizer state
    cb2 = callback()
    rec = Recorder(cb2)
    opt_state = {}

    class OptState(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            optimizer = trainer.optimizers[0]
            opt_state.update({i: optimizer.state[p]["exp_avg"].clone() for i, p in enumerate(cb2.loss.parameters())})

    torch.manual_seed(123)  # a different fresh head, overwritten by the checkpoint
    trainer(tmp_path, [cb2, rec, OptState()], max_steps=3).fit(Classifier("timm"), random_loader(), ckpt_path=last)
    assert all(torch.equal(rec.head_at_start[k], v) for k, v in saved.items())
    head_groups = stored["head_optimizer"]["param_groups"]
    head_ids = [i for g in head_groups for i in g["params"]]
    state = stored["head_optimizer"]["state"]
    order = {id(p): i for i, p in enumerate(cb2.loss.parameters())}
    # parameters of the head groups in checkpoint order == the callback's decay / no-decay split
    assert len(head_ids) == len(order) and all(state[i]["exp_avg"].abs().sum() > 0 for i in head_ids)
    assert sum(v.abs().sum() for v in opt_state.values()) == pytest.approx(
        sum(state[i]["exp_avg"].abs().sum().item() for i in head_ids), rel=1e-5
    )


def test_a_drloc_checkpoint_resumes_in_a_trainer_without_the_callback(tmp_path):
    torch.manual_seed(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [callback(), ckpt], enable_checkpointing=True).fit(Classifier("timm"), random_loader())
    last = tmp_path / "ckpt" / "last.ckpt"
    loaded = torch.load(last, weights_only=True)
    user_state = loaded["optimizer_states"][0]["state"]

    seen = {}

    class Check(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            optimizer = trainer.optimizers[0]
            params = [p for g in optimizer.param_groups for p in g["params"]]
            seen["exp_avg"] = [optimizer.state[p]["exp_avg"].clone() for p in params]
            seen["step"] = trainer.global_step
            seen["head"] = hasattr(pl_module, HEAD_ATTR)

    # no DrLocCallback: the user's optimizer and scheduler states load as they are, training goes on
    module = Classifier("timm")
    t = trainer(tmp_path, [Check()], max_steps=3, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning notes that the checkpoint was written with other callbacks
        t.fit(module, random_loader(), ckpt_path=last)
    assert seen["step"] == 2 and t.global_step == 3 and not seen["head"]
    assert len(seen["exp_avg"]) == len(user_state)
    assert all(torch.equal(a, user_state[i]["exp_avg"]) for i, a in enumerate(seen["exp_avg"]))


# ---------------------------------------------------------------------------------------- finding the grid
def test_backbone_built_in_configure_model(tmp_path):
    class Late(Classifier):
        def __init__(self):
            pl.LightningModule.__init__(self)
            self.save_hyperparameters({"kind": "timm", "lr": 1e-3, "return_dict": False})
            self.task_losses = []

        def configure_model(self):
            if not hasattr(self, "net"):
                self.net = timm.create_model("vit_tiny_patch16_224", num_classes=10, **VIT)

    module = Late()
    cb = callback()
    trainer(tmp_path, [cb], max_steps=1).fit(module, random_loader(n=8))
    assert cb.loss.head.in_dim == VIT["embed_dim"]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_tap_on_a_spatial_grid(tmp_path, layout):
    class ConvNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 8, stride=8)  # 4x4 grid of 16 channels
            self.stage = torch.nn.Identity()
            self.head = torch.nn.Linear(16, 10)

        def forward(self, x):
            grid = self.stem(x)
            if layout == "NHWC":
                grid = self.stage(grid.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            else:
                grid = self.stage(grid)
            return self.head(grid.mean((2, 3)))

    module = Classifier("hand")
    module.net = ConvNet()
    cb = callback("hand", tap="net.stage")
    trainer(tmp_path, [cb], max_steps=1).fit(module, random_loader(n=8))
    assert cb.grid_source.layout == layout and cb.loss.head.in_dim == 16


# ---------------------------------------------------------------------------------------- refusals
def fake_trainer(strategy=None):
    return SimpleNamespace(strategy=strategy)


@pytest.mark.parametrize("strategy", [FSDPStrategy, DeepSpeedStrategy])
def test_sharded_strategies_are_refused(strategy):
    with pytest.raises(DrLocConfigError, match=f"sharded strategy {strategy.__name__}"):
        DrLocCallback().setup(fake_trainer(object.__new__(strategy)), Classifier("timm"), "fit")


def test_manual_optimisation_is_refused(tmp_path):
    class Manual(Classifier):
        def __init__(self):
            super().__init__("timm")
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            loss = F.cross_entropy(self(batch[0]), batch[1])
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()

    with pytest.raises(DrLocConfigError, match="manual optimisation"):
        trainer(tmp_path, [callback()], max_steps=1).fit(Manual(), random_loader(n=8))


class TwoTimm(Classifier):
    def __init__(self):
        super().__init__("timm")
        self.teacher = timm.create_model("vit_tiny_patch16_224", num_classes=10, **VIT)


@pytest.mark.parametrize(
    "make, kwargs, error, message",
    [
        (lambda: Classifier("hand"), {}, DrLocConfigError, "input_size=\\(H, W\\)"),
        (TwoTimm, {}, BackboneLookupError, "found 2 timm models in TwoTimm: 'net', 'teacher'"),
        (
            lambda: Classifier("timm"),
            dict(backbone="net.blokcs"),
            BackboneLookupError,
            "no submodule 'net.blokcs'.*net.blocks",
        ),
        (
            lambda: Classifier("hand"),
            dict(tap="net.patch", input_size=32),
            GridTapError,
            "refuses tap='net.patch'.*before any transformer block",
        ),
        (lambda: Classifier("hand"), dict(tap="net.blocks"), DrLocConfigError, "input_size=\\(H, W\\)"),
        (
            lambda: Classifier("hand"),
            dict(tap="net.blocks", input_size=32, prefix_tokens=0),
            GridTapError,
            "prefix_tokens=",
        ),
        (
            lambda: DrLocModule("vit_tiny_patch16_224", 10, model_kwargs=VIT),
            {},
            DrLocConfigError,
            "already trains DRLoc",
        ),
    ],
    ids=["no-input-size-discovery", "two-timm", "typo", "patch-embedding", "no-input-size", "prefix", "drloc-module"],
)
def test_setup_errors_name_the_fix(make, kwargs, error, message):
    module = make()
    cb = DrLocCallback(**kwargs)
    with pytest.raises(error, match=message) as err:
        cb.setup(fake_trainer(), module, "fit")
    assert isinstance(err.value, DrLocConfigError) and isinstance(err.value, ValueError)  # one error family
    assert not hasattr(module, HEAD_ATTR) and "training_step" not in module.__dict__  # nothing left behind


def test_too_small_grid_is_refused():
    module = Classifier("timm")
    module.net = timm.create_model(
        "vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=32, depth=1, embed_dim=32, num_heads=2
    )
    with pytest.raises(GridTapError, match="1x1 grid.*at least 2x2"):
        DrLocCallback().setup(fake_trainer(), module, "fit")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lambda_drloc=-1.0), "lambda_drloc=-1.0"),
        (dict(grid_format="CHW"), "grid_format='CHW'"),
        (dict(drloc_mode="l3"), "mode='l3'"),
        (dict(num_pairs=0), "num_pairs=0"),
        (dict(lambda_schedule="step"), "schedule='step'"),
        (dict(prefix_tokens=-1), "prefix_tokens=-1"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DrLocCallback(**kwargs)


# ---------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_the_head_in_sync(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "ddp_callback.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # training_step (wrapped by the callback) ran inside DistributedDataParallel.forward on each rank
    assert (
        r0["wrapper"] == "DistributedDataParallel"
        and r0["inside_ddp_forward"] == r1["inside_ddp_forward"] == [True] * 3
    )
    # the heads were built differently on each rank; DDP broadcast rank 0's, then all-reduced the grads
    assert any(not torch.equal(r0["head_at_setup"][k], r1["head_at_setup"][k]) for k in r0["head"])
    assert all(torch.equal(r0["head_at_start"][k], r1["head_at_start"][k]) for k in r0["head"])
    assert r0["task_losses"] != r1["task_losses"]  # each rank saw its own data ...
    assert all(torch.equal(r0["head"][k], r1["head"][k]) for k in r0["head"])  # ... yet the heads agree
    assert any(not torch.equal(r0["head"][k], r0["head_at_start"][k]) for k in r0["head"])
    assert all(torch.equal(r0["backbone"][k], r1["backbone"][k]) for k in r0["backbone"])
    assert r0["restored"] and r1["restored"]


# ---------------------------------------------------------------------------------------- config and docs
def compose_callbacks_drloc(tmp_path, *overrides):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="vt_drloc.conf", version_base="1.3"):
            return compose(
                config_name="train", overrides=["callbacks=drloc", f"paths.output_dir={tmp_path}", *overrides]
            )
    finally:
        GlobalHydra.instance().clear()


def test_hydra_config_instantiates_with_the_signature_defaults(tmp_path):
    from vt_drloc.app.train import instantiate_all
    from vt_drloc.faces.objective import DrLocConfig

    cfg = compose_callbacks_drloc(tmp_path)
    default = OmegaConf.load(ROOT / "conf" / "callbacks" / "default.yaml")
    assert set(cfg.callbacks) == set(default) | {"drloc"}  # the default callbacks plus DRLoc
    drlocs = [cb for cb in instantiate_all(cfg.callbacks) if isinstance(cb, DrLocCallback)]
    assert len(drlocs) == 1 and drlocs[0].num_head_params == 0
    params = {n: p for n, p in inspect.signature(DrLocCallback).parameters.items() if p.kind is not p.VAR_KEYWORD}
    # how the grid is found is set in the callback's yaml; every DRLoc option comes from the drloc group
    assert set(cfg.callbacks.drloc) - {"_target_"} == set(params) - {"lambda_drloc"}
    for name, param in params.items():
        if name not in ("lambda_drloc", "drloc"):
            assert cfg.callbacks.drloc[name] == param.default, name
    assert drlocs[0].config == DrLocConfig.build(OmegaConf.to_container(cfg.drloc, resolve=True))
    assert isinstance(instantiate(cfg.callbacks.drloc), DrLocCallback)


def test_callbacks_drloc_honours_drloc_overrides(tmp_path):
    from vt_drloc.app.train import instantiate_all

    cfg = compose_callbacks_drloc(
        tmp_path,
        "drloc.lambda_drloc=0.7",
        "drloc.schedule=constant",
        "drloc.num_pairs=8",
        "drloc.hidden_dims=[32]",
        "drloc.tap_norm=post",
    )
    (cb,) = [cb for cb in instantiate_all(cfg.callbacks) if isinstance(cb, DrLocCallback)]
    c = cb.config
    assert (c.lambda_drloc, c.schedule, c.num_pairs, c.hidden_dims, c.tap_norm) == (0.7, "constant", 8, [32], "post")
    with pytest.raises(Exception, match="schedule='cosine'"):
        instantiate_all(compose_callbacks_drloc(tmp_path, "drloc.schedule=cosine").callbacks)


def doc_code() -> list[str]:
    text = (ROOT / "docs" / "callback.md").read_text()
    section = text[text.index("### A complete example") : text.index("### Which backbone")]
    return [block.strip() for block in re.findall(r"```python\n(.*?)```", section, re.S)]


@pytest.mark.slow
def test_notebook_is_the_documented_example_and_runs(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the example's checkpoints go to tempfile.mkdtemp()

    nb = nbformat.read(ROOT / "notebooks" / "drop_in_callback.ipynb", as_version=4)
    code = [cell.source.strip() for cell in nb.cells if cell.cell_type == "code"]
    assert code == doc_code()
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")  # stored without outputs
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert "train/drloc" in printed and "train/lambda" in printed and "resumed to epoch 3" in printed


def test_pair_generator_resumes_rank0_exactly_and_gives_other_ranks_their_own_stream():
    from vt_drloc.core import pair_generator

    g = pair_generator("cpu", seed=7)
    state = g.get_state()
    expected = torch.randint(100, (8,), generator=g)
    assert torch.equal(torch.randint(100, (8,), generator=pair_generator("cpu", 7, 0, state)), expected)
    assert not torch.equal(torch.randint(100, (8,), generator=pair_generator("cpu", 7, 1, state)), expected)
    assert not torch.equal(torch.randint(100, (8,), generator=pair_generator("cpu", 7, 1)), expected)


@pytest.mark.parametrize("head_decay", [0.0, 0.2])
def test_head_weight_decay_sets_the_added_groups_only(tmp_path, head_decay):
    module = Classifier("timm")
    cb = callback(head_weight_decay=head_decay)
    seen = {}

    class Check(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["groups"] = [
                (g["weight_decay"], {id(p) for p in g["params"]}) for g in trainer.optimizers[0].param_groups
            ]

    with pytest.warns(UserWarning, match="LambdaLR"):
        trainer(tmp_path, [cb, Check()], max_steps=1).fit(module, random_loader(n=8))
    user, *head = seen["groups"]
    assert user[0] == 0.05  # the user's own group keeps its decay
    head_weights = {id(p) for n, p in cb.loss.named_parameters() if p.ndim > 1}
    assert {i for _, ids in head for i in ids} == {id(p) for p in cb.loss.parameters()}
    assert all(decay == head_decay for decay, ids in head if ids & head_weights)
    assert all(decay == 0.0 for decay, ids in head if not ids & head_weights)  # biases never decay
