"""min_train_steps: small data trains more epochs, with every epoch setting stretched by one factor."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from test_train import TINY, compose_cfg

from vt_drloc.app.budget import epoch_factor, stretch_to_min_steps
from vt_drloc.app.config import UserError
from vt_drloc.train import train


class Loader:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class Data:
    def __init__(self, batches: int) -> None:
        self.batches = batches

    def train_dataloader(self) -> Loader:
        return Loader(self.batches)


def config(**trainer):
    return OmegaConf.create(
        {
            "min_train_steps": 450,
            "trainer": {"max_epochs": 30, "check_val_every_n_epoch": 5, **trainer},
            "optim": {"lr_warmup_epochs": 3, "lr_decay_epochs": None},
            "drloc": {"lambda_warmup_epochs": 6, "lambda_decay_epochs": None},
        }
    )


@pytest.mark.parametrize(
    ("min_steps", "per_epoch", "epochs", "factor"),
    [(450, 3, 30, 5), (450, 7, 30, 3), (450, 15, 30, 1), (None, 1, 1, 1)],
)
def test_epoch_factor_reaches_the_floor_with_one_integer(min_steps, per_epoch, epochs, factor):
    assert epoch_factor(min_steps, per_epoch, epochs) == factor
    if min_steps:
        assert per_epoch * epochs * factor >= min_steps > per_epoch * epochs * (factor - 1)


def test_every_epoch_setting_is_stretched_alike_and_null_ones_follow():
    cfg = config()
    record = stretch_to_min_steps(cfg, Data(batches=3))  # 25/class of CIFAR-10 at batch 64: 3 steps per epoch
    assert record["epoch_factor"] == 5 and record["steps_per_epoch"] == 3
    assert (cfg.trainer.max_epochs, cfg.trainer.check_val_every_n_epoch) == (150, 25)
    assert (cfg.optim.lr_warmup_epochs, cfg.drloc.lambda_warmup_epochs) == (15, 30)
    assert (
        cfg.optim.lr_decay_epochs is None and cfg.drloc.lambda_decay_epochs is None
    )  # null: the run's end, stretched already
    enough = config()
    assert stretch_to_min_steps(enough, Data(batches=15))["epoch_factor"] == 1 and enough.trainer.max_epochs == 30
    # a run that fixes its own length in steps or batches is left alone; 2 devices halve the steps per epoch
    for trainer in ({"max_steps": 100}, {"limit_train_batches": 2}):
        assert stretch_to_min_steps(config(**trainer), Data(batches=3))["epoch_factor"] == 1
    assert stretch_to_min_steps(config(devices=2), Data(batches=30))["steps_per_epoch"] == 15


@pytest.mark.fault(
    "`min_train_steps=0`", "one paragraph naming the value and what is valid, exit 2, before training", kind="bad input"
)
def test_a_small_run_reaches_the_floor_and_records_it(tmp_path):
    overrides = [o for o in TINY if not o.startswith(("trainer.limit_train_batches", "trainer.max_epochs"))]
    # 40 images at batch 8: 5 steps per epoch; 2 epochs = 10 steps, the floor 25 needs 3x: 6 epochs, 30 steps
    results = train(
        compose_cfg(
            [*overrides, "trainer.max_epochs=2", "min_train_steps=25", "optim.lr_warmup_epochs=1"], tmp_path / "run"
        )
    )
    assert results["global_step"] == 30 and results["epochs"] == 6
    assert results["budget"]["epoch_factor"] == 3 and results["budget"]["stretched"]["optim.lr_warmup_epochs"] == [1, 3]
    with pytest.raises(UserError, match=r"min_train_steps=0 is invalid: use an integer >= 1"):
        train(compose_cfg([*TINY, "min_train_steps=0"], tmp_path / "bad"))


@pytest.mark.parametrize(
    ("experiment", "batches", "epochs", "lambda_warmup"),
    # CIFAR-10 at batch 64 (2 % held out): 25/class is 3 batches, 100/class 15, 2,000/class 307
    [("study_cifar10", 3, 300, 60), ("study_cifar10", 15, 60, 12), ("study_cifar10", 307, 30, 6)]
    # Flowers-102: 1,020 training images, 16 batches
    + [("study_flowers102", 16, 60, 12)],
)
def test_the_study_recipes_train_at_least_900_steps(experiment, batches, epochs, lambda_warmup):
    """The study recipes' floor is the 900 steps that taught the 25/class head its task (docs/results.md,
    "Less data"): a run with fewer stretches every schedule by one factor, a longer one is left alone."""
    cfg = compose_cfg([f"experiment={experiment}"])
    record = stretch_to_min_steps(cfg, Data(batches=batches))
    assert cfg.trainer.max_epochs == epochs and cfg.drloc.lambda_warmup_epochs == lambda_warmup
    assert batches * cfg.trainer.max_epochs >= 900 == record["min_train_steps"]
