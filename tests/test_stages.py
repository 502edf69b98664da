"""Multi-scale DRLoc (``stages``): the loss on several stages of a hierarchical backbone, a head each, summed.

Each stage's grid is checked value for value against the tensor an expert would read (timm's
``forward_intermediates``, or the output of the stage module of a torchvision / transformers / CvT-style
backbone), on both faces; the loss against its per-stage parts; the checkpoint layout and a resume.
"""

from __future__ import annotations

import copy
import csv
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from vt_drloc import DrLocCallback, DrLocModule
from vt_drloc.core import DrLocConfigError, DrLocLoss, chance_l1
from vt_drloc.core.stages import MultiScaleDrLocLoss, check_stages, select_stages
from vt_drloc.faces.objective import DrLocConfig

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from vit_families import FAMILIES, loader, make_module  # noqa: E402

SWIN = dict(img_size=32, patch_size=2, window_size=4, embed_dim=24, depths=[1, 1], num_heads=[1, 2])
SWIN_NAME = "swin_tiny_patch4_window7_224"
VIT = dict(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2)
FAST = dict(schedule="constant", num_pairs=8, hidden_dims=[16])


def quiet_trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        max_steps=2,
        logger=pl.loggers.CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return pl.Trainer(**{**options, **kwargs})


def images(n: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 4, (n,), generator=g)), batch_size=4
    )


# ------------------------------------------------------------------------------------------- the loss
def test_the_multiscale_loss_is_the_sum_of_one_drloc_loss_per_stage():
    torch.manual_seed(0)
    loss = MultiScaleDrLocLoss([(8, (8, 8)), (16, (4, 4))], sample_size=6)
    alone = [copy.deepcopy(stage) for stage in loss.stages]
    assert all(isinstance(s, DrLocLoss) for s in alone) and alone[0].head.in_dim == 8 and alone[1].head.in_dim == 16
    grids = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    total = loss(grids, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)  # the stages draw their pairs in turn from one sampler
    parts = [stage(grid, generator=generator) for stage, grid in zip(alone, grids)]
    torch.testing.assert_close(total, parts[0] + parts[1])
    assert loss.chance_l1() == pytest.approx(chance_l1(8, 8, "abs") + chance_l1(4, 4, "abs"))
    assert loss.spec == ((8, (8, 8)), (16, (4, 4)))
    assert sorted({k.split(".head.")[0] for k in loss.state_dict()}) == ["stages.0", "stages.1"]
    with pytest.raises(DrLocConfigError, match="built for 2 grids, got 1"):
        loss(grids[:1])
    with pytest.raises(DrLocConfigError, match="at least two grids"):
        MultiScaleDrLocLoss([(8, (8, 8))])


@pytest.mark.parametrize("value, expected", [("last", "last"), ("all", "all"), ([-1], [-1]), ((0, -1), [0, -1])])
def test_stage_choices_that_are_valid(value, expected):
    assert check_stages(value) == expected
    assert DrLocConfig(stages=value).stages == expected


@pytest.mark.parametrize("value", ["first", "[]", "[0, 0]", "[0.5]", "[true]", "3"])
@pytest.mark.fault(
    "`drloc.stages={value}`", "`DrLocConfigError` naming the value and the valid choices", kind="bad input"
)
def test_stage_choices_that_are_refused_name_the_valid_ones(value):
    with pytest.raises(DrLocConfigError, match=r"stages=.*'last'.*'all'"):
        DrLocConfig(stages=yaml.safe_load(value))  # as Hydra parses drloc.stages=<value>


def test_a_stage_index_the_model_lacks_lists_the_stages_it_has():
    assert select_stages("all", [], "M") == [0] and select_stages([-1], [], "M") == [0]
    with pytest.raises(
        DrLocConfigError, match=r"has 1 stage\(s\) with a grid, so index 1 does not exist.*0 \(or -1\): the final"
    ):
        select_stages([0, 1], [], "M")
    with pytest.raises(DrLocConfigError, match="names one stage twice"):
        select_stages([0, -1], [], "M")


# ------------------------------------------------------------------------------------------- DrLocModule
def test_module_reads_every_swin_stage_as_timm_gives_it_in_one_forward():
    torch.manual_seed(0)
    module = DrLocModule(
        SWIN_NAME, num_classes=4, lambda_drloc=1.0, model_kwargs=SWIN, drloc=dict(stages="all", **FAST)
    )
    assert [(s.module, s.reading.layout, s.reading.height) for s in module.stage_grids] == [("layers.1", "NHWC", 16)]
    assert isinstance(module.loss, MultiScaleDrLocLoss) and module.loss.spec == ((24, (8, 8)), (48, (8, 8)))
    assert module.num_head_params == sum(p.numel() for p in module.loss.parameters())
    module.train()
    x = torch.randn(2, 3, 32, 32)
    calls = []
    handle = module.model.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    logits, grids = module.forward_with_grid(x)
    handle.remove()
    assert len(calls) == 1 and logits.shape == (2, 4)  # one backbone forward serves both losses
    with torch.no_grad():
        _, stages = module.model.forward_intermediates(x, indices=[0, 1], norm=False, output_fmt="NCHW")
    assert [tuple(g.shape) for g in grids] == [(2, 24, 16, 16), (2, 48, 8, 8)]
    for grid, reference in zip(grids, stages):
        torch.testing.assert_close(grid.detach(), reference, rtol=0, atol=0)
    step = module.objective.step(grids, None, 0)
    assert {"train/drloc_stage0", "train/drloc_stage1"} <= set(step.metrics)
    torch.testing.assert_close(
        step.drloc.detach(), step.metrics["train/drloc_stage0"] + step.metrics["train/drloc_stage1"]
    )


def test_a_reduction_inside_attention_is_not_a_stage():
    # PVT-v2 shrinks keys and values inside each attention (`attn.sr`); its stages are the stage inputs
    kwargs = dict(embed_dims=(16, 32, 64, 128), depths=(2, 1, 1, 1), num_heads=(1, 2, 4, 8))
    module = DrLocModule(
        "pvt_v2_b0",
        num_classes=4,
        lambda_drloc=1.0,
        input_size=64,
        model_kwargs=kwargs,
        drloc=dict(stages="all", **FAST),
    )
    assert [s.module for s in module.stage_grids] == ["stages.1", "stages.2", "stages.3"]
    module.train()
    x = torch.randn(2, 3, 64, 64)
    _, grids = module.forward_with_grid(x)
    with torch.no_grad():
        _, reference = module.model.forward_intermediates(x, indices=[0, 1, 2], output_fmt="NCHW")
    for grid, expected in zip(grids[:3], reference):
        torch.testing.assert_close(grid.detach(), expected, rtol=0, atol=0)


def test_module_on_one_stage_only_builds_one_head_for_it():
    module = DrLocModule(SWIN_NAME, num_classes=4, lambda_drloc=1.0, model_kwargs=SWIN, drloc=dict(stages=[0], **FAST))
    assert not module.final_is_stage and isinstance(module.loss, DrLocLoss) and module.loss.spec == ((24, (8, 8)),)
    module.train()
    _, grids = module.forward_with_grid(torch.randn(2, 3, 32, 32))
    assert [tuple(g.shape) for g in grids] == [(2, 24, 16, 16)]


def test_a_plain_vit_has_one_stage_so_all_is_the_final_grid():
    last = DrLocModule(
        "vit_tiny_patch16_224", num_classes=4, lambda_drloc=1.0, model_kwargs=VIT, drloc=dict(stages="last", **FAST)
    )
    every = DrLocModule(
        "vit_tiny_patch16_224", num_classes=4, lambda_drloc=1.0, model_kwargs=VIT, drloc=dict(stages="all", **FAST)
    )
    assert every.stage_grids == [] and isinstance(every.loss, DrLocLoss) and every.loss.spec == last.loss.spec
    assert list(every.state_dict()) == list(last.state_dict())
    with pytest.raises(DrLocConfigError, match=r"has 1 stage\(s\)"):
        DrLocModule(
            "vit_tiny_patch16_224", num_classes=4, lambda_drloc=1.0, model_kwargs=VIT, drloc=dict(stages=[0, 1], **FAST)
        )


def test_module_trains_saves_and_loads_a_multiscale_head(tmp_path):
    torch.manual_seed(0)
    module = DrLocModule(
        SWIN_NAME, num_classes=4, lambda_drloc=1.0, model_kwargs=SWIN, drloc=dict(stages="all", **FAST)
    )
    before = {k: v.clone() for k, v in module.state_dict().items() if k.startswith("drloc.stages.0.")}
    trainer = quiet_trainer(tmp_path)
    trainer.fit(module, images())
    moved = [k for k, v in before.items() if not torch.equal(v, module.state_dict()[k])]
    assert moved  # the first stage's head trained
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert any(r.get("train/drloc_stage0") for r in rows) and any(r.get("train/drloc_stage1") for r in rows)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = DrLocModule.load_from_checkpoint(path, weights_only=False)
    assert loaded.config.stages == "all" and isinstance(loaded.loss, MultiScaleDrLocLoss)
    for key, value in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- DrLocCallback
STAGE_MODULES = {  # the module whose output an expert reads as the first stage's grid, and its layout
    "tv_swin": ("model.features.1", lambda t: t.permute(0, 3, 1, 2)),
    "hf_swin": ("model.swin.encoder.layers.0.blocks.0", lambda t: t[0].transpose(1, 2).unflatten(-1, (8, 8))),
    "cvt_style": ("model.stages.0", lambda t: t),
}


def needs(family: str) -> None:
    for name in FAMILIES[family].needs:
        pytest.importorskip(name)


@pytest.mark.parametrize("family", list(STAGE_MODULES))
def test_callback_finds_the_stages_of_hierarchical_backbones_by_what_runs(family, tmp_path):
    needs(family)
    torch.manual_seed(0)
    module = make_module(family)
    keys = list(module.state_dict())
    cb = DrLocCallback(lambda_drloc=0.5, stages="all", schedule="constant")
    seen: dict[str, torch.Tensor] = {}
    original = cb.objective.step

    def spy(grid, trainer, batch_idx):
        seen.setdefault("grids", [g.detach().clone() for g in grid])
        return original(grid, trainer, batch_idx)

    cb.objective.step = spy
    name, to_nchw = STAGE_MODULES[family]
    expert = []
    handle = dict(module.named_modules())[name].register_forward_hook(lambda _m, _a, out: expert.append(out))
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.callbacks.append(cb)
    trainer.fit(module, loader(family))
    handle.remove()
    assert len(cb.stage_sources) == 1 and cb.final_is_stage and cb.stage_sources[0].point == "stage"
    assert cb.stage_sources[0].grid == (8, 8) and cb.grid_source.grid == (4, 4)
    assert isinstance(cb.loss, MultiScaleDrLocLoss) and len(cb.head) == 2
    first, final = seen["grids"]
    trained = [out for out in expert if (out[0] if isinstance(out, tuple) else out).requires_grad]  # not the probes
    torch.testing.assert_close(first, to_nchw(trained[0]).detach(), rtol=0, atol=0)
    assert final.shape[-2:] == (4, 4)
    assert list(module.state_dict()) == keys
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert {"train/drloc_step", "train/drloc_stage0", "train/drloc_stage1"} <= set(rows[0])
    assert sorted({k.split(".head.")[0] for k in cb.state_dict()["head"]}) == ["stages.0", "stages.1"]


def test_callback_multiscale_run_resumes_with_both_heads(tmp_path):
    torch.manual_seed(0)
    module = make_module("tv_swin")
    trainer = quiet_trainer(tmp_path, max_steps=2, enable_checkpointing=True)
    cb = DrLocCallback(lambda_drloc=0.5, stages="all", schedule="constant")
    trainer.callbacks.append(cb)
    trainer.fit(module, loader("tv_swin"))
    path = tmp_path / "a.ckpt"
    trainer.save_checkpoint(path)
    heads = {k: v.clone() for k, v in cb.state_dict()["head"].items()}
    again = DrLocCallback(lambda_drloc=0.5, stages="all", schedule="constant")
    resumed = quiet_trainer(tmp_path / "b", max_steps=3)
    resumed.callbacks.append(again)
    resumed_module = make_module("tv_swin")
    restored: dict[str, torch.Tensor] = {}
    original = again.objective.step

    def spy(grid, trainer, batch_idx):
        restored.update({k: v.clone() for k, v in again.loss.state_dict().items()} if not restored else {})
        return original(grid, trainer, batch_idx)

    again.objective.step = spy
    resumed.fit(resumed_module, loader("tv_swin"), ckpt_path=path)
    assert resumed.global_step == 3 and set(restored) == set(heads)
    for key, value in heads.items():
        torch.testing.assert_close(restored[key], value, rtol=0, atol=0)


def test_a_user_module_without_stages_trains_one_head_with_stages_all(tmp_path):
    module = make_module("seq_first")
    cb = DrLocCallback(lambda_drloc=0.5, stages="all")
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.callbacks.append(cb)
    trainer.fit(module, loader("seq_first"))
    assert cb.stage_sources == [] and isinstance(cb.loss, DrLocLoss)


# ------------------------------------------------------------------------------------------- the app
def test_the_app_trains_a_multiscale_swin_and_records_each_stage_grid(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_train import TINY, compose_cfg, read_results

    from vt_drloc.app.train import train

    overrides = [o for o in TINY if not o.startswith("model.kwargs.")] + [
        "model=swin_study",
        "model.kwargs.embed_dim=16",
        "model.kwargs.depths=[1,1]",
        "model.kwargs.num_heads=[1,2]",
        "drloc.stages=all",
    ]
    train(compose_cfg(overrides, tmp_path / "run"))
    written = read_results(tmp_path / "run")
    assert written["status"] == "ok" and written["drloc_grid"] == [[8, 8], [8, 8]]
    assert written["drloc_chance_l1"] == pytest.approx(2 * chance_l1(8, 8, "abs"))
    assert written["drloc_final_over_chance"] == pytest.approx(written["drloc_final_loss"] / written["drloc_chance_l1"])
