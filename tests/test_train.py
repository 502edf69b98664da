"""The training app: config composition, train(cfg), the CLI, resume, eval, DDP on CPU, the wheel, bad input."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vt_drloc.app.config import UserError, group_options
from vt_drloc.app.train import build_module, train
from vt_drloc.core import drloc_lambda, epoch_progress
from vt_drloc.faces.module import DrLocModule

REPO = Path(__file__).resolve().parents[1]
# A 2-batch CIFAR-10 run from the archive: tiny ViT, few images, no caching, no workers.
TINY = [
    "experiment=quickstart",
    "model.kwargs.depth=1",
    "model.kwargs.embed_dim=32",
    "model.kwargs.num_heads=2",
    "drloc.num_pairs=8",
    "drloc.hidden_dims=[32]",
    "data.samples_per_class=4",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.cache=false",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.limit_train_batches=2",
    # validation: the whole stratified 100-image hold-out (10 per class), never a one-class prefix
    "data.val_fraction=0.002",
    "data.eval_batch_size=100",
    "trainer.limit_val_batches=1.0",
    # test: 2 batches only, for speed; tests that compare test accuracies use the full split
    "trainer.limit_test_batches=2",
    "print_config=false",
]


def compose_cfg(overrides: list[str], output_dir: Path | None = None, config_name: str = "train"):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vt_drloc.conf", version_base="1.3"):
        extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else ["paths.output_dir=/nonexistent"]
        return compose(config_name=config_name, overrides=overrides + extra)


def cli(module: str, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def read_results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


# ----------------------------------------------------------------------------------- composition
def test_every_model_and_data_config_composes_and_instantiates():
    models = group_options("model")
    datas = group_options("data")
    assert {
        "swin_t",
        "resnet50",
        "vit_b16",
        "vit_tiny_c32",
        "cvt_13",
        "t2t_vit_14",
        "cvt_13_c32",
        "t2t_vit_14_c32",
    } <= set(models)
    assert {"cifar10", "cifar100", "svhn", "flowers102", "folder"} <= set(datas)
    built, taps = {}, {}
    for model in models:
        for data in datas:
            extra = ["data.folder_name=mine"] if data == "folder" else []
            cfg = compose_cfg([f"model={model}", f"data={data}", *extra])
            OmegaConf.resolve(cfg)
            dm = instantiate(cfg.data)
            assert dm.name == data and cfg.data.img_size == cfg.model.img_size
            if model not in built:  # one module per model config (a 224-px probe forward each)
                module = build_module(cfg, 10, float(cfg.drloc.lambda_drloc))
                assert module.grid_info is not None and min(module.grid_info.hw) >= 4
                assert module.hparams.lambda_drloc == OmegaConf.select(
                    cfg.model, "drloc.lambda_drloc", default=cfg.model.paper_lambda
                )
                built[model] = module.drloc.reduced_hw
                taps[model] = (module.grid_info.tap_norm, module.config.head_init)
    # the paper's models as the released code fed DRLoc (docs/fidelity.md): Swin-T and ResNet-50
    # 7x7 as they are, ViT-B/16 its 14x14 grid unpooled, CvT-13 / T2T-ViT-14 14x14 pooled to 7x7;
    # pre-norm tokens except T2T-ViT; the head re-initialised with the model for Swin-T and T2T only
    assert built["vit_b16"] == (14, 14)
    assert (
        built["swin_t"]
        == built["resnet50"]
        == built["cvt_13"]
        == built["cvt_13_drloc"]
        == built["t2t_vit_14"]
        == (7, 7)
    )
    assert taps["swin_t"] == ("pre", "released")
    assert taps["t2t_vit_14"] == taps["t2t_vit_14_c32"] == ("post", "released")
    assert taps["vit_b16"] == taps["cvt_13_drloc"] == taps["resnet50"] == ("pre", "torch")
    assert built["vit_tiny_c32"] == (8, 8)
    # the study's small models (docs/results.md): native 8x8 grids at 32 px, no pooling; generic defaults
    assert built["vit_study"] == built["swin_study"] == built["swin_ape_study"] == built["cvt_study"] == (8, 8)
    assert taps["vit_study"] == taps["swin_study"] == taps["swin_ape_study"] == taps["cvt_study"] == ("pre", "released")


def test_study_experiments_keep_8x8_grids_and_their_lambdas():
    """The study settings of docs/results.md: the ViT at its small-budget λ (1.0, the study's finding), the
    other families at their paper λ; 8x8 grids at 32 and 64 px."""
    for overrides, img, lam in (
        (["experiment=study_cifar10"], 32, 1.0),
        (["experiment=study_cifar10", "model=swin_study"], 32, 0.5),
        (["experiment=study_cifar10", "model=swin_ape_study"], 32, 0.5),
        (["experiment=study_cifar10", "model=cvt_study"], 32, 0.1),
        (["experiment=study_flowers102"], 64, 1.0),
    ):
        cfg = compose_cfg(overrides)
        OmegaConf.resolve(cfg)
        assert cfg.data.img_size == img and cfg.drloc.lambda_drloc == lam and cfg.drloc.schedule == "warmup_decay"
        module = build_module(cfg, 10, float(cfg.drloc.lambda_drloc))
        assert module.grid_info.hw == (8, 8) and module.drloc.reduced_hw == (8, 8), overrides
    ape = compose_cfg(["experiment=study_cifar10", "model=swin_ape_study"])
    assert ape.model.name == "swin_ape_tiny_patch4_window7_224"
    assert {k: v for k, v in ape.model.kwargs.items()} == dict(
        compose_cfg(["experiment=study_cifar10", "model=swin_study"]).model.kwargs
    )
    flowers = compose_cfg(["experiment=study_flowers102"])
    assert (
        flowers.data.name == "flowers102" and flowers.data.val_split == "val" and flowers.model.kwargs.patch_size == 8
    )


def test_every_experiment_composes():
    experiments = [e for e in group_options("experiment") if e != "paper_recipe"]
    assert "quickstart" in experiments and "paper_swin_t_cifar10" in experiments
    for exp in experiments:
        cfg = compose_cfg([f"experiment={exp}"])
        OmegaConf.resolve(cfg)
        assert cfg.task_name == exp
    paper = compose_cfg(["experiment=paper_swin_t_cifar10"])
    assert paper.data.img_size == 224 and paper.trainer.max_epochs == 100 and paper.data.mixup_alpha == 0.8
    assert (
        paper.drloc.lambda_drloc == 0.5
        and paper.optim.lr_warmup_epochs == 20
        and paper.model.kwargs.drop_path_rate == 0.2
    )
    assert paper.trainer.gradient_clip_val == 5.0 and paper.data.auto_augment == "rand-m9-mstd0.5-inc1"


def test_paper_swin_t_composes_to_the_released_run():
    """experiment=paper_swin_t_cifar10 is the released Swin-T run (docs/fidelity.md): λ 0.5 over 100 trained
    epochs with the λ decay and the LR cosine laid out over 300, λ set per epoch, pre-norm 7x7 grid,
    head re-initialised with trunc. normal 0.02; the released log's λ per epoch."""
    cfg = compose_cfg(["experiment=paper_swin_t_cifar10"])
    OmegaConf.resolve(cfg)
    d, o = cfg.drloc, cfg.optim
    schedule = (d.lambda_drloc, d.schedule, d.lambda_warmup_epochs, d.lambda_decay_epochs, d.interval)
    assert schedule == (0.5, "warmup_decay", 20, 300, "epoch")
    assert (d.tap_norm, d.pool_target, d.head_init, d.target, d.hidden_dims, d.num_pairs) == (
        "pre",
        7,
        "released",
        "abs",
        "released",
        64,
    )
    assert cfg.trainer.max_epochs == 100
    assert (o.lr_decay_epochs, o.lr_warmup_prefix, o.lr_warmup_epochs) == (300, False, 20)
    assert (o.lr, o.lr_min, o.lr_batch_scale, cfg.data.batch_size) == (5e-4, 5e-6, 512, 128)
    module = build_module(cfg, 10, float(d.lambda_drloc), global_batch=128)
    # the released scaling: lr and lr_min by global batch / 512, passed to the module at construction
    assert module.hparams.lr == pytest.approx(1.25e-4) and module.hparams.lr_min == pytest.approx(1.25e-6)
    assert build_module(cfg, 10, 0.0).hparams.lr == 5e-4  # batch unknown: as configured
    assert module.grid_info.hw == module.drloc.reduced_hw == (7, 7) and module.grid_info.tap_norm == "pre"
    assert all(torch.count_nonzero(m.bias) == 0 for m in module.drloc.head.modules() if isinstance(m, torch.nn.Linear))
    hp = module.config
    lam = [
        drloc_lambda(
            hp.lambda_drloc,
            epoch_progress(e, 100, 390, hp.interval),
            cfg.trainer.max_epochs,
            hp.schedule,
            hp.lambda_warmup_epochs,
            hp.lambda_decay_epochs,
        )
        for e in (0, 1, 20, 50, 99)
    ]
    assert [round(v, 4) for v in lam] == [0.0, 0.025, 0.5, 0.4464, 0.3589]


def test_struct_mode_rejects_misspelt_keys():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="lamda_drloc"):
        compose_cfg(["drloc.lamda_drloc=0.1"])


def test_trainer_presets_compose():
    for preset, expected in {"cpu": "32-true", "gpu": "16-mixed", "ddp": "16-mixed", "ddp_cpu": "32-true"}.items():
        cfg = compose_cfg([f"trainer={preset}"])
        assert cfg.trainer.precision == expected
    assert compose_cfg(["trainer=ddp_cpu"]).trainer.devices == 2


# ----------------------------------------------------------------------------------- runs
def test_two_batch_train_run_writes_results_checkpoints_and_logs(tmp_path):
    cfg = compose_cfg(TINY, tmp_path / "run")
    results = train(cfg)
    out = tmp_path / "run"
    written = read_results(out)
    assert written["status"] == "ok" and written["global_step"] == 2 and written["train_size"] == 40
    assert written["head_params"] > 0 and written["backbone_params"] > 0 and written["lambda_drloc"] == 1.0
    for key in ("val_acc1", "val_acc5", "test_acc1", "test_acc5", "wall_time_s", "images_per_s", "seed", "epochs"):
        assert written[key] is not None, key
    assert 0 <= written["test_acc1"] <= written["test_acc5"] <= 1
    assert 0.0 < written["val_acc1"] < 1.0  # a balanced 10-class hold-out, not a one-class prefix
    assert results["test_acc1"] == written["test_acc1"]
    # did the head learn its task: the 8x8 grid, chance_l1(8, 8) = 1.5625 and the last epoch's loss / chance
    assert written["drloc_grid"] == [8, 8] and written["drloc_chance_l1"] == 1.5625
    drloc_epoch = [
        float(r["train/drloc_epoch"])
        for r in csv.DictReader((out / "csv" / "metrics.csv").open())
        if r.get("train/drloc_epoch")
    ]
    assert written["drloc_final_loss"] == pytest.approx(drloc_epoch[-1])
    assert written["drloc_final_over_chance"] == pytest.approx(drloc_epoch[-1] / 1.5625)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "csv").glob("metrics.csv")) and list((out / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("epochs, every", [(3, 5), (3, 2)])
@pytest.mark.fault(
    "validation every {every} epochs, a {epochs}-epoch run",
    "`last.ckpt` holds the final epoch's weights (was: no checkpoint at all, or the final epoch unsaved)",
)
def test_last_checkpoint_holds_the_final_weights_whatever_the_validation_cadence(tmp_path, epochs, every):
    """last.ckpt at every epoch end: validating every 5 epochs, a 3-epoch run used to end with no checkpoint,
    and every 2, its final epoch unsaved."""
    overrides = [o for o in TINY if not o.startswith(("trainer.max_epochs", "trainer.check_val_every_n_epoch"))]
    cfg = compose_cfg(
        [*overrides, f"trainer.max_epochs={epochs}", f"trainer.check_val_every_n_epoch={every}"], tmp_path / "run"
    )
    train(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == epochs - 1 and ckpt["global_step"] == 2 * epochs  # the last epoch, after its last step
    assert read_results(tmp_path / "run")["global_step"] == ckpt["global_step"]


@pytest.mark.parametrize("overrides", [["callbacks=none"], ["callbacks.last_checkpoint.every_n_train_steps=3"]])
@pytest.mark.fault(
    "`{overrides}`: no save covers the last step",
    "train saves the final weights to `last.ckpt` after fit: the weights `results.json` reports are on disk",
)
def test_final_weights_saved_when_no_checkpoint_cadence_covers_them(tmp_path, overrides):
    """No checkpoint callbacks, or a step cadence whose last save (step 3) is before the last step (4)."""
    cfg = compose_cfg(
        [*[o for o in TINY if not o.startswith("trainer.max_epochs")], "trainer.max_epochs=2", *overrides],
        tmp_path / "run",
    )
    results = train(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == results["global_step"] == 4


@pytest.mark.slow
def test_cli_run_resume_and_eval_round_trip(tmp_path):
    # the whole 10,000-image test split (sorted by class: a prefix would hold one class only)
    full_test = ["trainer.limit_test_batches=1.0", "data.eval_batch_size=500"]
    first = cli("vt_drloc.train", [*TINY, *full_test, f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / "a" / ".hydra" / "config.yaml").is_file()
    a = read_results(tmp_path / "a")
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2

    # resume: one more epoch continues from step 2 to step 4
    resumed = cli(
        "vt_drloc.train",
        [*TINY, "trainer.max_epochs=2", f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'b'}"],
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    b = read_results(tmp_path / "b")
    assert b["global_step"] == 4 and b["epochs"] == 2

    # eval of the first run's last checkpoint reproduces its test accuracy
    evaluated = cli(
        "vt_drloc.eval",
        [
            f"ckpt_path={last}",
            "data=cifar10",
            "data.num_workers=0",
            *full_test,
            "trainer.limit_val_batches=1",
            "print_config=false",
            f"hydra.run.dir={tmp_path / 'e'}",
        ],
        tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    e = read_results(tmp_path / "e")
    assert 0.0 < a["test_acc1"] < 1.0
    assert e["test_acc1"] == pytest.approx(a["test_acc1"]) and e["test_acc5"] == pytest.approx(a["test_acc5"])
    assert e["model"] == a["model"] and e["head_params"] == a["head_params"]


@pytest.mark.slow
def test_ddp_cpu_two_processes_write_one_results_file(tmp_path):
    run = cli(
        "vt_drloc.train",
        [*TINY, "trainer=ddp_cpu", "callbacks.rich_progress_bar=null", f"hydra.run.dir={tmp_path / 'ddp'}"],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = read_results(tmp_path / "ddp")
    assert results["world_size"] == 2 and results["status"] == "ok"
    assert len(list(tmp_path.rglob("results.json"))) == 1


@pytest.mark.slow
def test_wheel_ships_its_configs(tmp_path):
    wheel_dir, target, source = tmp_path / "wheel", tmp_path / "site", tmp_path / "source"
    # build from a copy of what the wheel is made of: setuptools builds inside the source tree and
    # would otherwise pick up a stale, git-ignored build/ folder (modules deleted since)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for part in ("src", "conf"):
        shutil.copytree(REPO / part, source / part, ignore=skip)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, source / part)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-v",
            "-w",
            str(wheel_dir),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    # a clean build: none of setuptools' warnings (e.g. "Package 'vt_drloc.conf.model' ... would be
    # ignored", printed once per undeclared config folder; deprecations in a "!!" box)
    log = build.stdout + build.stderr
    noise = [line for line in log.splitlines() if re.search(r"Warning:|would be ignored|^\s*!!\s*$", line)]
    assert not noise, "\n".join(noise[:20])
    wheel = next(wheel_dir.glob("vt_drloc-*.whl"))
    # every config ships, and every config group folder is a declared package (no setuptools warnings)
    import zipfile

    import tomllib

    names = zipfile.ZipFile(wheel).namelist()
    # the modules shipped are the package's modules, no more (no leftovers of deleted ones)
    modules = {
        p.relative_to(REPO / "src").as_posix() for p in (REPO / "src").rglob("*.py") if "__pycache__" not in p.parts
    }
    modules |= {f"vt_drloc/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.py")}
    assert {n for n in names if n.endswith(".py")} == modules
    shipped = {n for n in names if n.endswith(".yaml")}
    configs = sorted((REPO / "conf").rglob("*.yaml"))
    assert {f"vt_drloc/conf/{c.relative_to(REPO / 'conf').as_posix()}" for c in configs} == shipped
    packages = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    groups = {".".join(("vt_drloc", "conf", *c.parent.relative_to(REPO / "conf").parts)) for c in configs}
    assert groups <= packages, sorted(groups - packages)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    code = (
        "import vt_drloc.app.config as r, vt_drloc; print(vt_drloc.__file__); "
        "print(','.join(r.group_options('model'))); print(','.join(r.group_options('experiment')))"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    probe = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    location, models, experiments = probe.stdout.strip().splitlines()
    assert location.startswith(str(target))
    assert {"cvt_13", "swin_t", "vit_tiny_c32"} <= set(models.split(",")) and "quickstart" in experiments.split(",")
    composed = subprocess.run(
        [sys.executable, "-m", "vt_drloc.train", "experiment=quickstart", "--cfg", "job", "--resolve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert composed.returncode == 0 and "task_name: quickstart" in composed.stdout, composed.stderr[-2000:]


# ----------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["drloc.lambda_drloc=-0.5"], "drloc.lambda_drloc=-0.5"),
        (["drloc.num_pairs=0"], "drloc.num_pairs=0"),
        (["drloc.mode=l2"], "drloc.mode='l2'"),
        (["drloc.stages=middle"], "drloc.stages='middle' is not valid; choose 'last'"),
        (["drloc.stages=[0,5]"], "vit_tiny_patch16_224 has 1 stage.s. with a grid, so index 5 does not exist"),
        (["model.kwargs.patch_size=32"], "1x1 grid"),
        (["test_ckpt=middle"], "test_ckpt='middle'"),
        (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 is invalid: use an integer >= 1"),
        (
            ["data.samples_per_class=100000"],
            r"data.samples_per_class=100000 is larger than .* Use samples_per_class <= \d+",
        ),
        (["data=folder"], "data.folder_name must be set with data=...: the name of your data set's folder"),
    ],
)
@pytest.mark.fault(
    "`{overrides}`", "one paragraph naming the value and the fix, exit 2, before training", kind="bad input"
)
def test_bad_config_values_fail_before_training(tmp_path, overrides, message):
    cfg = compose_cfg(TINY + overrides, tmp_path / "run")
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.fault(
    "`ckpt_path` missing, not a checkpoint, cut short, or of another model; `init_from` cut short",
    "one paragraph naming the file and the fix, before training; a truncated file is never answered with advice to "
    "pass `trust_checkpoint=true`",
    kind="bad input",
)
def test_bad_checkpoints_are_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        train(compose_cfg(TINY + [f"ckpt_path={tmp_path / 'missing.ckpt'}"], tmp_path / "r1"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(
        UserError, match="cannot be read: it is truncated or not a checkpoint.*trust_checkpoint would not help"
    ):
        train(compose_cfg(TINY + [f"ckpt_path={junk}"], tmp_path / "r2"))
    # a real checkpoint cut short (a copy interrupted, a full disk): never the advice to trust it
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {"model_name": "x"}}, whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for key in ("ckpt_path", "init_from"):
        with pytest.raises(
            UserError, match=f"{key}=.*cannot be read: it is truncated.*trust_checkpoint would not help"
        ) as err:
            train(compose_cfg(TINY + [f"{key}={cut}"], tmp_path / f"r_{key}"))
        assert "pass trust_checkpoint=true" not in str(err.value)
    other = tmp_path / "other.ckpt"
    module = DrLocModule("resnet18", num_classes=10, lambda_drloc=0.0)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, other)
    with pytest.raises(UserError, match="holds model 'resnet18'"):
        train(compose_cfg(TINY + [f"ckpt_path={other}"], tmp_path / "r3"))


def test_cli_errors_are_one_paragraph_with_exit_code(tmp_path):
    unknown = cli("vt_drloc.train", ["model=swin_tt"], tmp_path, timeout=300)
    assert unknown.returncode == 2
    assert "unknown model config 'swin_tt'" in unknown.stderr and "swin_t" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    unknown_exp = cli("vt_drloc.train", ["experiment=quickstrat"], tmp_path, timeout=300)
    assert unknown_exp.returncode == 2 and "quickstart" in unknown_exp.stderr
    negative = cli(
        "vt_drloc.train", [*TINY, "drloc.lambda_drloc=-1", f"hydra.run.dir={tmp_path / 'neg'}"], tmp_path, timeout=300
    )
    assert (
        negative.returncode == 2 and "drloc.lambda_drloc=-1" in negative.stderr and "Traceback" not in negative.stderr
    )
    # a missing data set: one paragraph in the command line's spelling, before any model is built
    # (print_config left at its default: the config tree comes after the data check, not before the error)
    missing = cli(
        "vt_drloc.train", ["data.root=/nonexistent", f"hydra.run.dir={tmp_path / 'nodata'}"], tmp_path, timeout=300
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr[-2000:]
    assert "CONFIG" not in missing.stdout and "lambda_drloc" not in missing.stdout, missing.stdout[:500]
    error = [line for line in missing.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Dataset 'cifar10' not found" in error[0]
    assert (
        "data.root=<that directory>" in error[0]
        and "data.download=true" in error[0]
        and "download=True" not in error[0]
    )
    assert "params:" not in missing.stderr + missing.stdout  # the model was never built


def test_existing_output_dir_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"precious")
    with pytest.raises(UserError, match="already holds a run"):
        train(compose_cfg(TINY, out))
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == b"precious"


def test_module_group_instantiates_the_users_own_class(tmp_path, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "scripts"))
    cfg = compose_cfg([*TINY, "module._target_=custom_module.TaggedModule", "+module.tag=lab"], tmp_path / "run")
    module = build_module(cfg, 10, 0.1)
    assert type(module).__name__ == "TaggedModule" and module.tag == "lab"
    assert module.config.num_pairs == 8 and module.hparams.lr == cfg.optim.lr  # model / drloc / optim reach it
    results = train(cfg)
    assert results["module"] == "custom_module.TaggedModule" and results["global_step"] == 2
    assert "custom_module" in sys.modules
    with pytest.raises(UserError, match=r"module config \(vt_drloc.faces.module.DrLocModule\): .*num_pairs"):
        build_module(compose_cfg([*TINY, "drloc.num_pairs=0"]), 10, 0.1)


def test_optim_group_builds_the_optimizer_it_names(tmp_path):
    # optim.optimizer is a _partial_ of the class, as in lightning-hydra-template; the module owns lr / weight decay
    cfg = compose_cfg([*TINY, "optim=sgd", "optim.optimizer.momentum=0.8"], tmp_path / "run")
    module = build_module(cfg, 10, 0.1)
    assert module.hparams.optimizer == {"_target_": "torch.optim.SGD", "momentum": 0.8, "nesterov": True}
    results = train(cfg)
    assert results["global_step"] == 2
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["optimizer"]["_target_"] == "torch.optim.SGD"
    assert "momentum_buffer" in next(iter(saved["optimizer_states"][0]["state"].values()))
    nadam = build_module(compose_cfg([*TINY, "optim.optimizer._target_=torch.optim.NAdam"]), 10, 0.1)
    assert nadam.hparams.optimizer == {"_target_": "torch.optim.NAdam", "betas": [0.9, 0.999]}
    for override, message in [
        ("+optim.optimizer.foo=1", r"AdamW.*unexpected keyword argument 'foo'"),
        ("+optim.optimizer.lr=1", r"sets lr: these come from the module's own arguments \(optim.lr"),
        ("optim.optimizer._target_=torch.nn.Linear", r"is not a torch.optim.Optimizer class"),
    ]:
        with pytest.raises(UserError, match=message):
            build_module(compose_cfg([*TINY, override]), 10, 0.1)
