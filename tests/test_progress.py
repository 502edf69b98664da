"""The whole run's ETA in the progress output, and the warning when the DRLoc head is not learning (issue 26)."""

from __future__ import annotations

import logging
import math
import re

import pytest
from test_train import TINY, compose_cfg

from vt_drloc.app.progress import RunProgress, format_duration, run_eta
from vt_drloc.app.train import train

NO_BAR = "callbacks.rich_progress_bar=null"


def test_run_eta_scales_the_pace_so_far_to_the_steps_left():
    assert run_eta(60.0, 10, 30) == pytest.approx(180.0)
    assert run_eta(60.0, 10, 0) == 0.0
    assert math.isinf(run_eta(0.0, 0, 5)) and math.isinf(run_eta(10.0, 5, math.inf))
    assert format_duration(3725.4) == "1:02:05" and format_duration(math.inf) == "?"
    with pytest.raises(ValueError, match="not_learning_ratio"):
        RunProgress(not_learning_ratio=0)


def test_each_epoch_logs_the_whole_runs_steps_and_eta(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vt_drloc.app.progress")
    train(compose_cfg([*TINY, NO_BAR, "trainer.max_epochs=3"], tmp_path / "run"))
    lines = [r.getMessage() for r in caplog.records if "run ETA" in r.getMessage()]
    assert [
        re.match(r"epoch (\d)/3 done, step (\d)/6, elapsed \d+:\d\d:\d\d, run ETA \d+:\d\d:\d\d$", s).groups()
        for s in lines
    ] == [
        ("1", "2"),
        ("2", "4"),
        ("3", "6"),
    ]
    assert lines[-1].endswith("run ETA 0:00:00")


@pytest.mark.fault(
    "a long run whose DRLoc head does not learn",
    "each epoch logs the whole run's steps and ETA; after λ's warm-up a head whose L1 is still ≥ 0.9 of chance is "
    "reported once, naming `drloc.lambda_drloc` and docs/results.md's λ advice",
)
def test_warns_once_when_the_head_stays_near_chance_after_the_warm_up(tmp_path, caplog):
    """Two steps at a tiny λ: the head cannot learn, so its L1 is near (above) chance at every epoch end."""
    caplog.set_level(logging.INFO, logger="vt_drloc.app.progress")
    tiny_lambda = ["drloc.lambda_drloc=0.001", "drloc.schedule=constant", "trainer.max_epochs=2"]
    train(compose_cfg([*TINY, NO_BAR, *tiny_lambda], tmp_path / "run"))
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not learning" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert (
        "drloc.lambda_drloc=0.001" in warnings[0] and "docs/results.md" in warnings[0] and "Choosing λ" in warnings[0]
    )
    assert float(re.search(r"its L1 is ([\d.]+) of chance", warnings[0]).group(1)) >= 0.9


def test_no_warning_during_the_warm_up_or_without_drloc(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vt_drloc.app.progress")
    train(compose_cfg([*TINY, NO_BAR, "drloc.lambda_drloc=0.001", "drloc.lambda_warmup_epochs=5"], tmp_path / "warm"))
    train(compose_cfg([*TINY, NO_BAR, "drloc.lambda_drloc=0"], tmp_path / "none"))
    assert not [r for r in caplog.records if "not learning" in r.getMessage()]
