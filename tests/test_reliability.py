"""Reliability (issue 9): kill and resume, torn checkpoints, non-finite losses, determinism,
untrusted checkpoints, DDP faults, bad output dirs. The table in docs/reliability.md cites these."""

from __future__ import annotations

import csv
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from test_train import TINY, cli, compose_cfg, read_results

from vt_drloc.app.checkpoints import check_output_dir
from vt_drloc.app.config import UserError
from vt_drloc.app.reliability import AtomicCheckpointIO, NonFiniteLossError
from vt_drloc.app.train import train

TESTS = Path(__file__).resolve().parent
# results.json keys that legitimately differ between two runs of the same config
VOLATILE = {"wall_time_s", "images_per_s", "output_dir"}
THREE_EPOCHS = [*TINY, "trainer.max_epochs=3", "trainer.deterministic=true", "callbacks.rich_progress_bar=null"]


def cli_faults(module: str, args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``cli`` with tests/ on PYTHONPATH, so ``+callbacks.x._target_=helpers.KillAt`` resolves in the subprocess."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (old, str(TESTS)) if p)
    try:
        return cli(module, args, cwd, timeout=timeout)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: Path, b: Path) -> list[str]:
    sa, sb = load(a)["state_dict"], load(b)["state_dict"]
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


def stable(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in VOLATILE}


# ----------------------------------------------------------------------------------- 3. non-finite loss
@pytest.mark.parametrize("term, value, step", [("drloc", "nan", 1), ("ce", "inf", 1), ("ce", "nan", 0)])
@pytest.mark.fault(
    "loss term `{term}` is {value} at global step {step}",
    "stopped with one message naming the term, the step and epoch, and the last good checkpoint (or that none was "
    "written yet); the bad step never reaches the weights; no `results.json`",
)
def test_non_finite_loss_stops_naming_term_step_and_last_good_checkpoint(tmp_path, term, value, step):
    out = tmp_path / "run"
    poison = [
        "+callbacks.poison._target_=helpers.PoisonLoss",
        f"+callbacks.poison.term={term}",
        f"+callbacks.poison.step={step}",
        f"+callbacks.poison.value={value}",
        "callbacks.last_checkpoint.every_n_train_steps=1",
    ]
    cfg = compose_cfg([*TINY, "trainer.max_epochs=2", *poison], out)
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    message = str(info.value)
    assert f"term {term} is not finite at global step {step} (epoch 0)" in message
    assert f"{term}={value}" in message
    last = out / "checkpoints" / "last.ckpt"
    if step == 0:
        assert "No checkpoint was written" in message and not last.exists()
    else:
        assert f"last good checkpoint is {last}" in message
        ckpt = load(last)  # the guard fires before backward: the saved weights are finite
        assert ckpt["global_step"] == step
        assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    assert not (out / "results.json").exists()


@pytest.mark.slow
@pytest.mark.fault(
    "a NaN loss in a CLI run",
    "exit code 3 (not a user mistake, so not the 2 of a bad value), one paragraph on stderr, no traceback",
)
def test_cli_non_finite_loss_exits_3_with_one_paragraph(tmp_path):
    run = cli_faults(
        "vt_drloc.train",
        [
            *TINY,
            "+callbacks.poison._target_=helpers.PoisonLoss",
            "+callbacks.poison.step=1",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    assert run.returncode == 3, run.stderr[-3000:]  # not a user mistake (2): its own code
    assert "error: non-finite training loss: term drloc is not finite at global step 1" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.fault("gradient clipping value and algorithm in the config", "reach the Trainer")
def test_gradient_clipping_is_configurable():
    cfg = compose_cfg([*TINY, "trainer.gradient_clip_val=0.5", "trainer.gradient_clip_algorithm=value"])
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.gradient_clip_val == 0.5 and trainer.gradient_clip_algorithm == "value"
    assert compose_cfg(TINY).trainer.gradient_clip_val == 5.0


# ----------------------------------------------------------------------------------- 2. torn checkpoints
@pytest.mark.fault(
    "an exception (ENOSPC) half-way through a checkpoint write",
    "the previous checkpoint intact and loadable; the temporary file removed",
)
def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert load(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # temporary file removed


SAVE_LOOP = """
import sys, torch
from vt_drloc.app.reliability import AtomicCheckpointIO
io, path, step = AtomicCheckpointIO(), sys.argv[1], 0
payload = torch.randn(4_000_000)  # 16 MB per write
while True:
    step += 1
    io.save_checkpoint({"step": step, "w": payload}, path)
    print(step, flush=True)
"""


@pytest.mark.slow
@pytest.mark.fault(
    "SIGKILL of a process rewriting a 16 MB checkpoint in a loop, at 4 different moments",
    "the checkpoint loaded (`weights_only=True`) every time",
)
def test_sigkill_during_checkpoint_writes_never_tears(tmp_path):
    """SIGKILL a process that rewrites a 16 MB checkpoint in a loop, at 4 different moments."""
    path = tmp_path / "last.ckpt"
    steps = []
    for i in range(4):
        proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(path)], stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # one complete write exists
        assert first.strip(), "writer did not start"
        time.sleep(0.05 + 0.07 * i)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        steps.append(load(path)["step"])  # always loadable, never torn
    assert all(s >= 1 for s in steps)
    assert not list(tmp_path.glob("*.ckpt.*")) or all(
        p.name.startswith(".tmp-") for p in tmp_path.iterdir() if p.name != "last.ckpt"
    )


@pytest.mark.fault("a real run with a checkpoint every step", "no partial or temporary files left in `checkpoints/`")
def test_checkpoint_folder_holds_no_partial_files_after_a_run(tmp_path):
    out = tmp_path / "run"
    train(compose_cfg([*TINY, "callbacks.last_checkpoint.every_n_train_steps=1"], out))
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "last.ckpt" in names and not [n for n in names if n.startswith(".tmp-")]
    assert load(out / "checkpoints" / "last.ckpt")["global_step"] == 2


# ----------------------------------------------------------------------------------- 1. kill and resume
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run = cli_faults("vt_drloc.train", [*THREE_EPOCHS, f"hydra.run.dir={out}"], out.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.fault(
    "SIGKILL at the start of epoch 2 of 3, resume with `ckpt_path=last` in the same folder",
    "resumed from step 4; ended at step 6, 3 epochs; weights bit-identical and `results.json` identical (incl. "
    "`best_val_acc1`) to the uninterrupted run",
)
@pytest.mark.fault(
    "the same kill, resumed from an explicit file into a new folder", "same steps, epochs and bit-identical weights"
)
def test_sigkill_on_epoch_boundary_then_resume_equals_uninterrupted_run(tmp_path, uninterrupted):
    out = tmp_path / "run"
    killed = cli_faults(
        "vt_drloc.train",
        [*THREE_EPOCHS, "+callbacks.kill._target_=helpers.KillAt", "+callbacks.kill.epoch=2", f"hydra.run.dir={out}"],
        tmp_path,
    )
    assert killed.returncode == -signal.SIGKILL
    assert load(out / "checkpoints" / "last.ckpt")["global_step"] == 4  # epochs 0 and 1 done
    saved = tmp_path / "killed_last.ckpt"
    shutil.copyfile(out / "checkpoints" / "last.ckpt", saved)
    # rerun the same command in the same folder with ckpt_path=last
    resumed = cli_faults("vt_drloc.train", [*THREE_EPOCHS, "ckpt_path=last", f"hydra.run.dir={out}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = read_results(uninterrupted), read_results(out)
    assert b["global_step"] == a["global_step"] == 6 and b["epochs"] == a["epochs"] == 3
    assert stable(a) == stable(b)  # every metric, best_val_acc1 included
    assert same_weights(uninterrupted / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt") == []

    # resuming into a new folder with an explicit path gives the same weights and steps too
    other = tmp_path / "other"
    again = cli_faults("vt_drloc.train", [*THREE_EPOCHS, f"ckpt_path={saved}", f"hydra.run.dir={other}"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    c = read_results(other)
    assert c["global_step"] == 6 and c["epochs"] == 3
    assert same_weights(uninterrupted / "checkpoints" / "last.ckpt", other / "checkpoints" / "last.ckpt") == []


@pytest.mark.slow
@pytest.mark.fault(
    "SIGTERM at the end of epoch 2 of 3 (a scheduler's stop)",
    "`last.ckpt` saved (step 4), `results.json` marked `interrupted` with the signal and the checkpoint, one paragraph "
    "saying how to resume, exit code 143 (was: exit 0, no `results.json`, no message); resuming in place ends with "
    "bit-identical weights and metrics to the uninterrupted run",
)
@pytest.mark.fault(
    "resume in place after SIGTERM",
    "`metrics.csv` keeps the rows of the epochs before the signal (Lightning's CSV logger would start it afresh)",
)
def test_sigterm_saves_a_checkpoint_marks_results_and_resumes_to_the_uninterrupted_weights(tmp_path, uninterrupted):
    out = tmp_path / "run"
    kill = ["+callbacks.kill._target_=helpers.KillAt", "+callbacks.kill.after_epoch=1", "+callbacks.kill.sig=SIGTERM"]
    stopped = cli_faults("vt_drloc.train", [*THREE_EPOCHS, *kill, f"hydra.run.dir={out}"], tmp_path)
    assert stopped.returncode == 143, stopped.stderr[-3000:]  # 128 + SIGTERM, never 0
    assert "SIGTERM stopped training" in stopped.stderr and f"ckpt_path=last hydra.run.dir={out}" in stopped.stderr
    marked = read_results(out)
    assert marked["status"] == "interrupted" and marked["signal"] == "SIGTERM" and marked["global_step"] == 4
    assert load(out / "checkpoints" / "last.ckpt")["global_step"] == 4
    resumed = cli_faults("vt_drloc.train", [*THREE_EPOCHS, "ckpt_path=last", f"hydra.run.dir={out}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = read_results(uninterrupted), read_results(out)
    assert b["status"] == "ok" and b["global_step"] == a["global_step"] == 6 and stable(a) == stable(b)
    assert same_weights(uninterrupted / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt") == []
    # resuming in place keeps the rows logged before the signal (Lightning's CSVLogger starts the file afresh)
    with open(out / "csv" / "metrics.csv", newline="") as handle:
        epochs = {row["epoch"] for row in csv.DictReader(handle) if row.get("epoch")}
    assert {"0", "1", "2"} <= epochs


@pytest.mark.slow
@pytest.mark.fault(
    "SIGINT (Ctrl-C) mid-epoch",
    "a checkpoint of the last finished step, `results.json` marked `interrupted`, exit code 130; `ckpt_path=last` "
    "finishes the run",
)
def test_sigint_saves_a_resumable_checkpoint_and_exits_130(tmp_path):
    out = tmp_path / "run"
    kill = ["+callbacks.kill._target_=helpers.KillAt", "+callbacks.kill.step=3", "+callbacks.kill.sig=SIGINT"]
    stopped = cli_faults("vt_drloc.train", [*THREE_EPOCHS, *kill, f"hydra.run.dir={out}"], tmp_path)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "SIGINT stopped training" in stopped.stderr and read_results(out)["status"] == "interrupted"
    assert load(out / "checkpoints" / "last.ckpt")["global_step"] == 3
    resumed = cli_faults("vt_drloc.train", [*THREE_EPOCHS, "ckpt_path=last", f"hydra.run.dir={out}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_results(out)["status"] == "ok" and read_results(out)["global_step"] == 6


@pytest.mark.slow
@pytest.mark.fault(
    "SIGKILL mid-epoch (before step 4 of 6) with step checkpoints every step",
    "`last.ckpt` at step 3 (1 step redone); the resumed run: 6 steps, 3 epochs, finite weights, status ok; weights "
    "differ (see Resuming)",
)
def test_sigkill_mid_epoch_resumes_from_step_checkpoint(tmp_path, uninterrupted):
    """every_n_train_steps=1: killed before step 4 (mid epoch 1), the run resumes from step 3 and ends
    with the same optimizer steps and epochs; see docs/reliability.md for what is not guaranteed."""
    out = tmp_path / "run"
    steps = ["callbacks.last_checkpoint.every_n_train_steps=1"]
    killed = cli_faults(
        "vt_drloc.train",
        [
            *THREE_EPOCHS,
            *steps,
            "+callbacks.kill._target_=helpers.KillAt",
            "+callbacks.kill.step=3",
            f"hydra.run.dir={out}",
        ],
        tmp_path,
    )
    assert killed.returncode == -signal.SIGKILL
    ckpt = load(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3 and ckpt["epoch"] == 1  # at most one step lost
    resumed = cli_faults("vt_drloc.train", [*THREE_EPOCHS, *steps, "ckpt_path=last", f"hydra.run.dir={out}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = read_results(uninterrupted), read_results(out)
    assert b["status"] == "ok" and b["global_step"] == a["global_step"] == 6 and b["epochs"] == a["epochs"] == 3
    weights = load(out / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.isfinite(t).all() for t in weights.values())
    differing = same_weights(uninterrupted / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt")
    print(f"mid-epoch resume: {len(differing)} of {len(weights)} tensors differ from the uninterrupted run")


@pytest.mark.fault(
    "resume without restoring the RNG states (ResumeRngState disabled), in-process",
    "all 24 weight tensors differ from the uninterrupted run (the data order changes); with it, none",
)
def test_restored_rng_state_is_what_makes_the_resume_exact(tmp_path, monkeypatch):
    """In-process twin of the SIGKILL test: 1 epoch + resume to 3 equals 3 epochs only with ResumeRngState."""
    import vt_drloc.app.reliability as reliability

    base = [*TINY, "trainer.deterministic=true", "callbacks.rich_progress_bar=null"]
    train(compose_cfg([*base, "trainer.max_epochs=3"], tmp_path / "full"))
    train(compose_cfg([*base, "trainer.max_epochs=1"], tmp_path / "first"))
    resume = [*base, "trainer.max_epochs=3", f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"]
    train(compose_cfg(resume, tmp_path / "with_rng"))
    monkeypatch.setattr(reliability.ResumeRngState, "load_state_dict", lambda self, state: None)
    train(compose_cfg(resume, tmp_path / "without_rng"))
    full = tmp_path / "full" / "checkpoints" / "last.ckpt"
    assert same_weights(full, tmp_path / "with_rng" / "checkpoints" / "last.ckpt") == []
    assert same_weights(full, tmp_path / "without_rng" / "checkpoints" / "last.ckpt") != []  # data order differs


@pytest.mark.fault(
    "`ckpt_path=last` in a fresh folder", "refused, saying how to point at the interrupted run", kind="bad input"
)
def test_ckpt_path_last_needs_a_checkpoint_in_the_run_folder(tmp_path):
    with pytest.raises(UserError, match="ckpt_path=last resumes the run in its own folder"):
        train(compose_cfg([*TINY, "ckpt_path=last"], tmp_path / "fresh"))


@pytest.mark.fault(
    "resuming in place into a finished run (it has `results.json`)", "refused, nothing overwritten", kind="bad input"
)
def test_finished_run_is_not_resumed_in_place(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"x")
    check_output_dir(out, resume_from=out / "checkpoints" / "last.ckpt")  # unfinished: allowed
    (out / "results.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a run"):
        check_output_dir(out, resume_from=out / "checkpoints" / "last.ckpt")


# ----------------------------------------------------------------------------------- 4. determinism
@pytest.mark.fault(
    "the same config and seed twice (2 epochs, mixup on, deterministic)",
    "identical `results.json` metrics and bit-identical weights; seed 1 gives different weights",
)
def test_same_config_and_seed_give_identical_results_and_weights(tmp_path):
    overrides = [*TINY, "trainer.max_epochs=2", "trainer.deterministic=true", "data.mixup_alpha=0.8"]
    a = train(compose_cfg(overrides, tmp_path / "a"))
    b = train(compose_cfg(overrides, tmp_path / "b"))
    assert stable(a) == stable(b)
    assert stable(read_results(tmp_path / "a")) == stable(read_results(tmp_path / "b"))
    assert (
        same_weights(tmp_path / "a" / "checkpoints" / "last.ckpt", tmp_path / "b" / "checkpoints" / "last.ckpt") == []
    )
    c = train(compose_cfg([*overrides, "seed=1"], tmp_path / "c"))
    assert (
        same_weights(tmp_path / "a" / "checkpoints" / "last.ckpt", tmp_path / "c" / "checkpoints" / "last.ckpt") != []
    )
    assert c["seed"] == 1


# ----------------------------------------------------------------------------------- 5. untrusted files
class Payload:  # any non-allow-listed class forces full unpickling
    pass


@pytest.mark.fault(
    "a checkpoint that needs full unpickling (holds an arbitrary class)",
    'refused: it "can run arbitrary code: pass trust_checkpoint=true only if you trust its origin"; with '
    "`trust_checkpoint=true` it resumes; `vt_drloc.eval` follows the same rule",
    kind="bad input",
)
@pytest.mark.fault(
    "our own checkpoints, RNG states included",
    "load with `torch.load(..., weights_only=True)`; resume passes `weights_only=True` to Lightning",
)
def test_own_checkpoints_load_weights_only_and_pickles_need_trust(tmp_path):
    out = tmp_path / "a"
    train(compose_cfg(TINY, out))
    own = load(out / "checkpoints" / "last.ckpt")  # weights_only=True, RNG states included
    assert "ResumeRngState" in own["callbacks"] and own["global_step"] == 2
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({**own, "extra": Payload()}, unsafe)
    with pytest.raises(UserError, match="trust_checkpoint=true") as info:
        train(compose_cfg([*TINY, f"ckpt_path={unsafe}"], tmp_path / "b"))
    assert "arbitrary code" in str(info.value) and not (tmp_path / "b" / "checkpoints").exists()
    resumed = train(
        compose_cfg([*TINY, f"ckpt_path={unsafe}", "trust_checkpoint=true", "trainer.max_epochs=2"], tmp_path / "c")
    )
    assert resumed["global_step"] == 4
    # vt_drloc.app.eval follows the same rule
    from vt_drloc.app.eval import evaluate

    quick = [
        "data.num_workers=0",
        "data.eval_batch_size=100",
        "trainer.limit_test_batches=1",
        "trainer.limit_val_batches=1",
        "print_config=false",
    ]
    with pytest.raises(UserError, match="trust_checkpoint=true"):
        evaluate(compose_cfg([f"ckpt_path={unsafe}", *quick], tmp_path / "e1", config_name="eval"))
    scored = evaluate(
        compose_cfg([f"ckpt_path={unsafe}", "trust_checkpoint=true", *quick], tmp_path / "e2", config_name="eval")
    )
    assert scored["model"] == own["hyper_parameters"]["model_name"] and 0 <= scored["test_acc1"] <= 1


# ----------------------------------------------------------------------------------- 7. DDP faults
@pytest.mark.slow
@pytest.mark.fault(
    "DDP, 2 CPU processes, rank 1 raises at step 1",
    "the whole job exits non-zero with the error in stderr (bound asserted: 180 s); no `results.json`",
)
def test_ddp_one_rank_raising_ends_the_job_quickly_with_nonzero_exit(tmp_path):
    start = time.monotonic()
    run = cli_faults(
        "vt_drloc.train",
        [
            *TINY,
            "trainer=ddp_cpu",
            "callbacks.rich_progress_bar=null",
            "trainer.max_epochs=2",
            "+callbacks.fault._target_=helpers.RaiseOnRank",
            "+callbacks.fault.rank=1",
            "+callbacks.fault.step=1",
            f"hydra.run.dir={tmp_path / 'ddp'}",
        ],
        tmp_path,
        timeout=240,
    )
    elapsed = time.monotonic() - start
    assert run.returncode != 0
    assert "injected fault on rank 1 at step 1" in run.stderr
    assert elapsed < 180, elapsed
    assert not (tmp_path / "ddp" / "results.json").exists()
    print(f"DDP fault: exit {run.returncode} after {elapsed:.1f} s")


# ----------------------------------------------------------------------------------- 6. output dir
@pytest.mark.fault(
    "an output dir that cannot be created (a file in the way)", "refused before training, exit 2", kind="bad input"
)
def test_output_dir_that_cannot_be_created_is_refused_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="is not writable"):
        train(compose_cfg(TINY, blocker / "run"))


@pytest.mark.fault("a full disk (ENOSPC on the write probe)", "refused before training")
def test_full_disk_is_detected_before_training(tmp_path, monkeypatch):
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == ".write_test":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError, match="No space left on device"):
        train(compose_cfg(TINY, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------------- 6. every user-facing key
BAD_VALUES = [
    "seed=-1",
    "seed=abc",
    "test=maybe",
    "print_config=2",
    "trust_checkpoint=yes",
    "optim.lr=0",
    "optim.lr=-1",
    "optim.weight_decay=-1",
    "optim.lr_min=1",
    "optim.label_smoothing=1.5",
    "optim.lr_warmup_epochs=-1",
    "optim.lr_batch_scale=0",
    "data.batch_size=0",
    "data.batch_size=-3",
    "data.num_workers=-1",
    "data.img_size=0",
    "data.samples_per_class=0",
    "data.val_split=bogus",
    "data.mixup_alpha=-1",
    "trainer.max_epochs=0",
    "trainer.max_epochs=-5",
    "trainer.precision=17",
    "trainer.gradient_clip_val=-1",
    "trainer.gradient_clip_algorithm=l3",
    "trainer.accelerator=tpu",
    "trainer.devices=0",
    "trainer.accumulate_grad_batches=0",
    "trainer.check_val_every_n_epoch=0",
    "trainer.log_every_n_steps=-1",
    "trainer.limit_train_batches=0",
    "trainer.limit_val_batches=-1",
    "drloc.lambda_drloc=nan",
    "drloc.lambda_drloc=inf",
    "drloc.num_pairs=-2",
    "drloc.pool_target=1",
    "drloc.lambda_warmup_epochs=-1",
    "drloc.hidden_dims=[0]",
    "drloc.seed=abc",
    "drloc.target=rel",
    "drloc.schedule=cosine",
    "drloc.tap_norm=mid",
    "drloc.head_init=xavier",
    "drloc.class_head=shared",
    "drloc.interval=batch",
    "drloc.lambda_decay_epochs=0",
    "drloc.head_weight_decay=-0.1",
    "optim.lr_decay_epochs=-1",
    "optim.lr_warmup_prefix=maybe",
    "model.kwargs.depth=0",
    "callbacks.last_checkpoint.every_n_train_steps=-1",
]


@pytest.mark.parametrize("override", BAD_VALUES)
@pytest.mark.fault(
    "`{override}`", "one paragraph naming the key, exit 2, before any checkpoint or `results.json`", kind="bad input"
)
def test_bad_user_facing_value_is_a_user_error_before_training(tmp_path, override):
    # the message names the key, except where the library's own message says what is missing
    expected = {"trainer.accelerator=tpu": "torch_xla", "model.kwargs.depth=0": "could not probe model"}
    key = override.split("=", 1)[0]
    with pytest.raises(UserError) as info:
        train(compose_cfg([*TINY, override], tmp_path / "run"))
    assert expected.get(override, key.split(".")[-1]) in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "results.json").exists()


def test_write_atomic_replaces_whole_files_and_keeps_the_old_one_on_error(tmp_path):
    """The one atomic-write helper behind checkpoints, results.json and summaries."""
    import stat

    from vt_drloc.base.files import write_atomic

    target = tmp_path / "sub" / "results.json"
    assert write_atomic(target, b'{"a": 1}') == target and target.read_bytes() == b'{"a": 1}'
    plain = tmp_path / "plain.json"
    plain.write_bytes(b"{}")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)  # the mode a plain write gives

    def failing(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, failing)
    assert target.read_bytes() == b'{"a": 1}' and [p.name for p in target.parent.iterdir()] == ["results.json"]
    write_atomic(target, lambda handle: handle.write(b"new"))
    assert target.read_bytes() == b"new"
