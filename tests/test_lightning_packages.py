"""Both Lightning packages: ``pytorch_lightning`` (``vt_drloc.*``) and ``lightning.pytorch``
(``vt_drloc.lightning.*``) train DrLocModule and DrLocCallback, and raise one exception type
(``vt_drloc.core.errors.DrLocConfigError``) under both."""

from __future__ import annotations

import importlib

import pytest
import timm
import torch
import torch.nn.functional as F
from test_readme import section_code
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from vt_drloc.core.errors import DrLocConfigError

PACKAGES = ["pytorch_lightning", "lightning.pytorch"]
TINY_VIT = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)  # 4x4 grid
FAST = dict(schedule="constant", seed=0, hidden_dims=[32], num_pairs=8)


def faces(package: str):
    """(lightning package module, vt_drloc namespace holding its DrLocModule / DrLocCallback)."""
    pl = importlib.import_module(package)
    ns = importlib.import_module("vt_drloc" if package == "pytorch_lightning" else "vt_drloc.lightning")
    return pl, ns


def data(n: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)), batch_size=8
    )


def fit(pl, module, loader, callbacks=(), steps: int = 2):
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        limit_val_batches=0,
    )
    trainer.fit(module, loader)
    return trainer


@pytest.mark.parametrize("package", PACKAGES)
def test_drloc_module_trains_under_each_trainer(package):
    pl, ns = faces(package)
    torch.manual_seed(0)
    module = ns.DrLocModule("vit_tiny_patch16_224", num_classes=10, lambda_drloc=0.5, model_kwargs=TINY_VIT, **FAST)
    assert isinstance(module, pl.LightningModule)
    head = {k: v.clone() for k, v in module.drloc.state_dict().items()}
    trainer = fit(pl, module, data())
    assert trainer.global_step == 2 and trainer.callback_metrics["train/drloc"].item() > 0
    assert any(not torch.equal(head[k], v) for k, v in module.drloc.state_dict().items())  # the head trained


@pytest.mark.parametrize("package", PACKAGES)
def test_readme_callback_example_under_each_package(package):
    code = section_code("Add DRLoc to your Lightning project")
    if package == "lightning.pytorch":
        assert "import pytorch_lightning as pl" in code and "from vt_drloc import DrLocCallback" in code
        code = code.replace("import pytorch_lightning as pl", "import lightning.pytorch as pl")
        code = code.replace("from vt_drloc import DrLocCallback", "from vt_drloc.lightning import DrLocCallback")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert type(trainer).__module__.startswith(package)
    assert trainer.global_step == 4 and trainer.callback_metrics["train/drloc"].item() > 0


@pytest.mark.parametrize("package", PACKAGES)
def test_callback_errors_are_the_packages_own(package):
    pl, ns = faces(package)

    class Manual(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.net = timm.create_model("vit_tiny_patch16_224", num_classes=10, **TINY_VIT)

        def training_step(self, batch, batch_idx):
            return None

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(DrLocConfigError, match="manual optimisation"):  # the same type under both packages
        fit(pl, Manual(), data(), [ns.DrLocCallback(lambda_drloc=0.1, **FAST)])


class Blocks(nn.Module):
    """A backbone that is not a timm model and knows nothing of its input size."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GELU())
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def no_forward_module(pl):
    class NoForward(pl.LightningModule):
        """A project's module that defines no forward: training_step calls self.backbone directly."""

        def __init__(self):
            super().__init__()
            self.backbone = Blocks()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.backbone(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    return NoForward()


class CountingDataset(TensorDataset):
    def __init__(self, *tensors):
        super().__init__(*tensors)
        self.reads = []

    def __getitem__(self, index):
        self.reads.append(index)
        return super().__getitem__(index)


class CountingLoader(DataLoader):
    iterations = 0

    def __iter__(self):
        self.iterations += 1
        return super().__iter__()


@pytest.mark.parametrize("package", PACKAGES)
def test_callback_sizes_a_non_timm_backbone_from_the_first_sample_without_forward(package):
    pl, ns = faces(package)
    torch.manual_seed(0)
    module = no_forward_module(pl)
    cb = ns.DrLocCallback(lambda_drloc=1.0, tap="backbone.blocks", **FAST)
    trainer = fit(pl, module, data())  # 32 px images, stride 4 -> an 8x8 NCHW grid
    assert cb.loss is None  # not attached: the callback was not given to this trainer
    g = torch.Generator().manual_seed(0)
    dataset = CountingDataset(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g))
    loader = CountingLoader(dataset, batch_size=8)
    trainer = fit(pl, no_forward_module(pl), loader, [cb])
    # the size came from one indexed read of sample 0; the loader was iterated by the fit loop only
    assert dataset.reads == [0, *range(16)] and loader.iterations == 1
    assert cb.grid_source.layout == "NCHW" and cb.loss.head.in_dim == 16 and cb.loss.reduced_hw == (8, 8)
    assert trainer.global_step == 2 and trainer.callback_metrics["train/drloc"].item() > 0


class Stream(IterableDataset):
    def __iter__(self):
        for _ in range(16):
            yield torch.randn(3, 32, 32), torch.tensor(0)


def test_callback_without_any_size_source_names_the_fix():
    pl, ns = faces("pytorch_lightning")
    cb = ns.DrLocCallback(lambda_drloc=1.0, tap="backbone.blocks", **FAST)
    with pytest.raises(DrLocConfigError, match=r"input_size=\(H, W\)"):
        fit(pl, no_forward_module(pl), DataLoader(Stream(), batch_size=8), [cb])  # an iterable: no sample to read


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize(
    "face, kwargs",
    [
        ("DrLocCallback", dict(lambda_drloc=-1.0)),
        ("DrLocCallback", dict(grid_format="CHW")),
        ("DrLocCallback", dict(prefix_tokens=-1)),
        ("DrLocCallback", dict(num_pairs=0)),
        ("DrLocCallback", dict(bogus_option=1)),
        ("DrLocModule", dict(model_name="vit_tiny_patch16_224", num_classes=10, lambda_drloc=-1.0)),
        ("DrLocModule", dict(model_name="no_such_model", num_classes=10)),
        (
            "DrLocModule",
            dict(model_name="vit_tiny_patch16_224", num_classes=10, lr_decay_epochs=0, model_kwargs=TINY_VIT),
        ),
        ("DrLocModule", dict(model_name="vit_tiny_patch16_224", num_classes=10, mode="l3", model_kwargs=TINY_VIT)),
    ],
)
def test_every_configuration_check_of_both_faces_raises_one_error_type(package, face, kwargs):
    _, ns = faces(package)
    with pytest.raises(DrLocConfigError) as err:
        getattr(ns, face)(**kwargs)
    assert isinstance(err.value, ValueError) and str(err.value)
