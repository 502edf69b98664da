"""DrLocCallback on the ViTs users already have: ``DrLocCallback(lambda_drloc=...)`` and nothing else.

Hugging Face ``transformers`` (ViT, DeiT with distillation token, Swin), torchvision (VisionTransformer,
SwinTransformer), a sequence-first ``nn.TransformerEncoder`` ViT and a CvT-style NCHW backbone, each in a
LightningModule written as its library's users write it (tests/scripts/vit_families.py). Tiny models
from configs with random weights; nothing is downloaded.
"""

from __future__ import annotations

import copy
import csv
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vt_drloc.core.discover import GridSource

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from vit_families import FAMILIES, ConvAttention, hf_attention_tap, loader, make_module  # noqa: E402

FAST = dict(schedule="constant", seed=0)


def faces(package: str):
    return importlib.import_module(package), importlib.import_module(
        "vt_drloc" if package == "pytorch_lightning" else "vt_drloc.lightning"
    )


def needs(family: str) -> None:
    for name in FAMILIES[family].needs:
        pytest.importorskip(name)  # `pip install -e .[dev]` installs them: CI runs every family


def stub_trainer(family: str) -> SimpleNamespace:
    """What setup reads of a trainer: its strategy and the data ``fit`` was given (for the input size)."""
    return SimpleNamespace(
        strategy=None, datamodule=None, fit_loop=SimpleNamespace(_data_source=SimpleNamespace(instance=loader(family)))
    )


def tapped_grid(cb, module, family: str, x: torch.Tensor) -> torch.Tensor:
    """The (B, C, k, k) grid the callback reads during one forward of ``x`` through the user's model."""
    call = (lambda: module.model(pixel_values=x)) if family.startswith("hf_") else (lambda: module.model(x))
    with torch.no_grad():
        _, raw = cb.capture.capture(call, mode="probe")
    return cb.capture.to_grid(raw)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_grid_found_without_arguments_is_the_experts_tap(family):
    needs(family)
    spec = FAMILIES[family]
    _, ns = faces("pytorch_lightning")
    torch.manual_seed(0)
    module = make_module(family).eval()
    expert_module = copy.deepcopy(module)
    found, expert = ns.DrLocCallback(lambda_drloc=0.5), ns.DrLocCallback(lambda_drloc=0.5, **spec.expert_args(module))
    found.setup(stub_trainer(family), module, "fit")
    expert.setup(stub_trainer(family), expert_module, "fit")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    grid, reference = tapped_grid(found, module, family, x), tapped_grid(expert, expert_module, family, x)
    assert grid.shape == (4, spec.channels, *spec.grid)
    torch.testing.assert_close(grid, reference, rtol=0, atol=0)  # the same tensor, value for value
    source = found.grid_source
    assert isinstance(source, GridSource) and source.found == "discovered"
    assert (source.layout, source.prefix_tokens, source.grid, source.channels) == (
        spec.layout,
        spec.prefix_tokens,
        spec.grid,
        spec.channels,
    )
    assert dict(module.named_modules()).get(source.module) is not None  # a path the user can pass as tap=
    found.teardown(None, module, "fit")
    assert not hasattr(module, "_drloc_loss") and "training_step" not in module.__dict__


def fit_family(family: str, package: str, tmp_path: Path):
    pl, ns = faces(package)
    torch.manual_seed(0)
    module = make_module(family, package)
    keys = list(module.state_dict())
    cb = ns.DrLocCallback(lambda_drloc=0.5)
    logger = pl.loggers.CSVLogger(tmp_path, name="", version="")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.callbacks.append(cb)
    trainer.fit(module, loader(family))
    return module, keys, cb, trainer


@pytest.mark.parametrize(
    "family, package",
    [(f, "pytorch_lightning") for f in FAMILIES]
    + [("hf_vit", "lightning.pytorch"), ("seq_first", "lightning.pytorch")],
)
def test_family_trains_with_drloc_logged_under_its_documented_names(family, package, tmp_path):
    needs(family)
    module, keys, cb, trainer = fit_family(family, package, tmp_path)
    assert trainer.global_step == 2 and cb.grid_source is not None
    assert list(module.state_dict()) == keys  # nothing of DRLoc left in the user's state_dict
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    columns = set(rows[0])
    # the documented names (docs/callback.md): train/drloc_step each step, train/drloc_epoch its epoch mean
    assert {"train/drloc_step", "train/drloc_epoch", "train/lambda"} <= columns
    steps = [float(r["train/drloc_step"]) for r in rows if r.get("train/drloc_step")]
    assert len(steps) == 2 and all(v > 0 for v in steps)


def test_the_choice_is_logged_in_one_line(caplog, tmp_path):
    with caplog.at_level("INFO"):
        fit_family("tv_vit", "pytorch_lightning", tmp_path)
    lines = [r.getMessage() for r in caplog.records if "DrLocCallback reads the DRLoc grid" in r.getMessage()]
    assert len(lines) == 1 and "'model.encoder.ln'" in lines[0] and "1 prefix token(s) dropped: 4x4 grid" in lines[0]


@pytest.mark.parametrize(
    "family, tap, message",
    [
        ("tv_vit", "model.conv_proj", "refuses tap='model.conv_proj'.*before any transformer block"),
        ("seq_first", "model.input_layer", "refuses tap='model.input_layer'.*before any transformer block"),
        ("hf_vit", "model.vit.embeddings", "refuses tap='model.vit.embeddings'.*before any transformer block"),
        ("hf_vit", hf_attention_tap, "returns tuple.*unnamed tuple elements are never read"),
    ],
)
def test_patch_embedding_and_tuple_taps_are_refused_with_the_candidates(family, tap, message):
    needs(family)
    _, ns = faces("pytorch_lightning")
    module = make_module(family)
    if callable(tap):
        tap = tap(module)
    cb = ns.DrLocCallback(lambda_drloc=0.5, tap=tap)
    with pytest.raises(ns.DrLocConfigError, match=message) as err:
        cb.setup(stub_trainer(family), module, "fit")
    # the message lists this model's candidate modules with their output shapes, ready to copy
    assert "tap='model." in str(err.value).split("candidates:")[1]
    assert not hasattr(module, "_drloc_loss")


def test_two_equal_readings_stop_with_both_listed():
    pl, ns = faces("pytorch_lightning")

    class Cube(torch.nn.Module):  # the final map is (B, 8, 8, 8): NCHW and NHWC fit equally
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Conv2d(3, 8, 4, stride=4)
            self.mixer = ConvAttention(8)
            self.head = torch.nn.Linear(8, 10)

        def forward(self, x):
            return self.head(self.mixer(self.embed(x)).mean((2, 3)))

    class User(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Cube()

        def forward(self, x):
            return self.net(x)

    with pytest.raises(ns.DrLocConfigError, match="grid_format='NCHW'.*grid_format='NHWC'"):
        ns.DrLocCallback(lambda_drloc=0.5, input_size=32).setup(SimpleNamespace(strategy=None), User(), "fit")
    cb = ns.DrLocCallback(lambda_drloc=0.5, input_size=32, grid_format="NCHW")
    cb.setup(SimpleNamespace(strategy=None), User(), "fit")
    assert cb.grid_source.layout == "NCHW" and cb.grid_source.grid == (8, 8)
