"""One meaning per name (issue 27): λ's schedule is lambda_*, the learning rate's lr_*, the pair count
num_pairs, the pooling target pool_target. The names they replace keep working for one release, each
with one warning naming old -> new: as Python keywords of both faces, as Hydra command-line keys, and in
checkpoints written before the rename."""

from __future__ import annotations

import warnings

import pytest
import torch

from vt_drloc import DrLocCallback, DrLocModule
from vt_drloc.app.config import OLD_CLI_KEYS, rewrite_old_cli_keys
from vt_drloc.faces.objective import RENAMED_OPTIONS, DrLocConfig

TINY = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}


def module(**kwargs):
    return DrLocModule("vit_tiny_patch16_224", num_classes=4, model_kwargs=TINY, **kwargs)


def renamed_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


@pytest.mark.parametrize(
    ("old", "new", "value"), [(o, n, v) for (o, n), v in zip(RENAMED_OPTIONS.items(), (16, 4, 3, 50))]
)
def test_an_old_drloc_option_name_works_with_one_warning(old, new, value):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = DrLocConfig.build({old: value})
    assert getattr(config, new) == value
    assert renamed_warnings(caught) == [f"DRLoc option {old!r} is now {new!r}; the old name works until vt_drloc 0.3"]
    assert old not in config.as_dict() and config.as_dict()[new] == value  # results.json records the new name


def test_the_new_names_are_the_fields_and_warn_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = DrLocConfig.build(num_pairs=16, pool_target=4, lambda_warmup_epochs=3, lambda_decay_epochs=50)
    assert (config.num_pairs, config.pool_target, config.lambda_warmup_epochs, config.lambda_decay_epochs) == (
        16,
        4,
        3,
        50,
    )
    with pytest.raises(ValueError, match="given twice"):
        DrLocConfig.build(num_pairs=16, sample_size=8)


def test_warmup_epochs_keeps_its_old_meaning_on_each_face():
    """Before the rename, DrLocModule(warmup_epochs=) was the learning rate's warm-up and
    DrLocCallback(warmup_epochs=) λ's: each old spelling still means what it meant, with a warning."""
    with pytest.warns(FutureWarning, match="'warmup_epochs' is now 'lr_warmup_epochs'"):
        m = module(lambda_drloc=0.1, warmup_epochs=5)
    assert m.hparams.lr_warmup_epochs == 5 and m.config.lambda_warmup_epochs == 20
    with pytest.warns(FutureWarning, match="'warmup_epochs' is now 'lambda_warmup_epochs'"):
        cb = DrLocCallback(lambda_drloc=0.1, warmup_epochs=5)
    assert cb.config.lambda_warmup_epochs == 5
    with pytest.warns(FutureWarning, match="'min_lr' is now 'lr_min'"):
        assert module(lr=1e-3, min_lr=1e-5).hparams.lr_min == 1e-5


def test_both_faces_take_the_same_drloc_option_names():
    options = {"num_pairs": 8, "pool_target": 4, "lambda_warmup_epochs": 2, "lambda_decay_epochs": 9}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        m = module(lambda_drloc=0.1, **options)
        cb = DrLocCallback(lambda_drloc=0.1, **options)
    assert m.config == cb.config


def test_a_checkpoint_written_before_the_rename_loads(tmp_path):
    """Hyper-parameters of vt_drloc <= 0.2 name the LR warm-up warmup_epochs and the DRLoc options by their
    old names: the module loads them, each old value in its new place."""
    m = module(lambda_drloc=0.1, lr_warmup_epochs=3, num_pairs=8)
    path = tmp_path / "old.ckpt"
    checkpoint = {
        "state_dict": m.state_dict(),
        "pytorch-lightning_version": "2.4.0",
        "hyper_parameters": dict(m.hparams),
    }
    hp = checkpoint["hyper_parameters"]
    hp["warmup_epochs"] = hp.pop("lr_warmup_epochs")
    hp["min_lr"] = hp.pop("lr_min")
    hp["warmup_prefix"] = hp.pop("lr_warmup_prefix")
    drloc = dict(hp["drloc"])
    for old, new in RENAMED_OPTIONS.items():
        drloc[old] = drloc.pop(new)
    hp["drloc"] = drloc
    torch.save(checkpoint, path)
    with pytest.warns(FutureWarning):
        loaded = DrLocModule.load_from_checkpoint(path, weights_only=False)
    assert loaded.hparams.lr_warmup_epochs == 3 and loaded.config.num_pairs == 8
    for key, value in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_old_command_line_keys_are_rewritten_with_one_warning():
    argv = ["-m", "drloc.sample_size=16", "+optim.warmup_epochs=3", "drloc.lambda_drloc=0,0.1", "optim.decay_epochs=50"]
    with pytest.warns(FutureWarning) as caught:
        new = rewrite_old_cli_keys(argv)
    assert new == [
        "-m",
        "drloc.num_pairs=16",
        "+optim.lr_warmup_epochs=3",
        "drloc.lambda_drloc=0,0.1",
        "optim.lr_decay_epochs=50",
    ]
    messages = sorted(str(w.message) for w in caught)
    assert messages == sorted(
        f"{old} is now {OLD_CLI_KEYS[old]}; the old key works until vt_drloc 0.3"
        for old in ("drloc.sample_size", "optim.warmup_epochs", "optim.decay_epochs")
    )


def test_an_old_key_on_the_command_line_composes_the_new_option(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONWARNINGS="default")
    args = ["drloc.sample_size=16", "optim.min_lr=0", "--cfg", "job"]
    run = subprocess.run(
        [sys.executable, "-m", "vt_drloc.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "num_pairs: 16" in run.stdout and "sample_size" not in run.stdout and "lr_min: 0" in run.stdout
    assert "drloc.sample_size is now drloc.num_pairs; the old key works until vt_drloc 0.3" in run.stderr
    assert "optim.min_lr is now optim.lr_min" in run.stderr


def test_a_model_config_with_the_flat_drloc_keys_of_0_2_still_sets_them(tmp_path):
    """A user's own model config written for vt_drloc 0.2 (drloc_tap_norm: post, ...) keeps its effect."""
    from test_train import compose_cfg

    from vt_drloc.app.config import check_run_config

    cfg = compose_cfg(
        ["model=vit_tiny_c32", "+model.drloc_tap_norm=post", "+model.drloc_grid_size=3"], tmp_path / "run"
    )
    assert (cfg.drloc.tap_norm, cfg.drloc.pool_target) == ("post", 3)
    with pytest.warns(FutureWarning, match=r"model.drloc_tap_norm is now model.drloc.tap_norm"):
        check_run_config(cfg)
    assert DrLocConfig.build(cfg.drloc).tap_norm == "post"
