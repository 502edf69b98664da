"""Keeping long runs safe: no torn checkpoints, exact resume, loud non-finite losses.

Three pieces, all wired into :func:`vt_drloc.app.train.train` (see ``docs/reliability.md``):

* :class:`AtomicCheckpointIO` -- a Lightning ``CheckpointIO`` plugin that writes every checkpoint
  to a temporary file in the same folder, flushes and ``fsync``\\ s it, then ``os.replace``\\ s it over
  the target. A crash (SIGKILL, power loss, full disk) while a checkpoint is written leaves the
  previous checkpoint intact and loadable.
* :class:`ResumeRngState` -- a callback that stores the Python / NumPy / torch (CPU and CUDA)
  random states in each checkpoint as plain types (``weights_only=True`` still loads it) and
  restores them on resume, so a run killed on an epoch boundary and resumed draws the same data
  order and augmentations as an uninterrupted one.
* :class:`NonFiniteLossGuard` -- a callback that checks the loss and each of its terms (``ce``,
  ``drloc``) before every backward pass and stops the run with :class:`NonFiniteLossError`
  naming the term, the step and the last good checkpoint. The non-finite step is never applied.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import Tensor

from vt_drloc.app.config import RunStopped
from vt_drloc.base.files import write_atomic

__all__ = [
    "AtomicCheckpointIO",
    "InterruptCheckpoint",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "ResumeRngState",
    "atomic_torch_save",
    "last_good_checkpoint",
    "save_final_checkpoint",
]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partly written ``path``.

    See :func:`vt_drloc.base.files.write_atomic`.
    """
    write_atomic(path, lambda handle: torch.save(obj, handle))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with :func:`atomic_torch_save` for local paths.

    Lightning's own save goes through a temporary file in the *system* temp folder and
    ``shutil.move``: across filesystems that is a copy into the target (torn by a crash), and
    nothing is fsync'ed. Remote (fsspec) paths keep Lightning's behaviour.

    >>> trainer = pl.Trainer(plugins=[AtomicCheckpointIO()])  # doctest: +SKIP
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        protocol = get_filesystem(path).protocol
        protocols = protocol if isinstance(protocol, (tuple, list)) else (protocol,)
        if storage_options is not None or not {"file", "local"} & set(protocols):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, os.fspath(path))


# ---------------------------------------------------------------------------------- RNG state
def _numpy_state_plain() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _numpy_state_restore(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


class ResumeRngState(pl.Callback):
    """Save the global random states with every checkpoint and restore them on resume.

    Lightning checkpoints hold weights, optimizer, schedulers and loop counters, but not the
    random states that shuffle the training data (``DataLoader(shuffle=True)`` draws from the
    global torch generator) and drive augmentation and dropout. Without them a resumed run sees
    a different data order from the one it would have seen. Everything is stored as tensors,
    ints, floats and strings, so ``torch.load(..., weights_only=True)`` reads the checkpoint.
    """

    key = "rng_states"

    def state_dict(self) -> dict[str, Any]:  # stored under checkpoint["callbacks"][state_key]
        states: dict[str, Any] = {
            "python": _python_state_plain(),
            "numpy": _numpy_state_plain(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return {self.key: states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get(self.key)
        if not states:
            return
        _python_state_restore(states["python"])
        _numpy_state_restore(states["numpy"])
        torch.set_rng_state(states["torch"].cpu())
        cuda = states.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _python_state_plain() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_state_restore(state: dict[str, Any]) -> None:
    random.setstate((state["version"], tuple(int(v) for v in state["state"].tolist()), state["gauss"]))


# ---------------------------------------------------------------------------------- non-finite loss
class NonFiniteLossError(RunStopped):
    """The training loss (or one of its terms) became NaN or infinite; the run was stopped (exit code 3:
    not a mistake in the command, so not the 2 of a :class:`~vt_drloc.app.config.UserError`)."""


def save_final_checkpoint(trainer: pl.Trainer, path: str | os.PathLike) -> bool:
    """Save the weights fit ended with to ``path`` (the run's ``last.ckpt``) unless it holds them already.

    The epoch-end save covers most runs; this covers the rest: a step cadence
    (``every_n_train_steps``) whose last step is off the cadence, and runs without checkpoint
    callbacks (``callbacks=none``). Returns whether it wrote. Call it on every rank (saving is collective).
    """
    saved_step = -1
    if trainer.is_global_zero and os.path.isfile(path):
        try:  # mmap: reads the step without loading the weights
            saved_step = int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))
        except Exception:  # unreadable: rewrite it
            saved_step = -1
    stale = trainer.strategy.broadcast(saved_step != trainer.global_step, src=0)
    if stale:
        trainer.save_checkpoint(path)
    return bool(stale)


def last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    """Most recent checkpoint written by the trainer's ModelCheckpoint callbacks (None if none yet)."""
    best: tuple[float, str] | None = None
    for cb in trainer.checkpoint_callbacks:
        for attr in ("last_model_path", "best_model_path"):
            path = getattr(cb, attr, "") or ""
            if path and os.path.isfile(path):
                mtime = os.path.getmtime(path)
                if best is None or mtime > best[0]:
                    best = (mtime, path)
    return None if best is None else best[1]


def _value(t: Tensor | float) -> float:
    return float(t.detach().float().item()) if isinstance(t, Tensor) else float(t)


class NonFiniteLossGuard(pl.Callback):
    """Stop training at the first NaN / inf loss, before it reaches the weights.

    Runs in ``on_before_backward``, i.e. before the gradients of the bad step exist, so the last
    checkpoint and the weights in memory are both finite. The module exposes its terms as
    ``pl_module.loss_terms`` (``{"ce": ..., "drloc": ...}``, detached); with :class:`DrLocCallback`
    the DRLoc term is the difference between the total and ``ce``. Under DDP the decision is
    reduced over ranks (any rank bad -> every rank stops), so no rank waits in a collective.

    The check costs one host sync per step (``.item()`` on a scalar).
    """

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        terms = dict(getattr(pl_module, "loss_terms", None) or {})
        bad_local = not bool(torch.isfinite(loss.detach()).all())
        bad = trainer.strategy.reduce_boolean_decision(bad_local, all=False)
        if not bad:
            return
        step, epoch = trainer.global_step, trainer.current_epoch
        values = {name: _value(t) for name, t in terms.items()}
        named = [name for name, v in values.items() if not math.isfinite(v)]
        if bad_local and not named:
            # Only the total is bad: the term added outside the module (DrLocCallback) is DRLoc.
            named = ["drloc"] if "drloc" not in values else ["loss"]
        where = f"rank {trainer.global_rank}" if bad_local else "another rank"
        shown = ", ".join(f"{k}={v:.6g}" for k, v in values.items()) or f"loss={_value(loss):.6g}"
        ckpt = last_good_checkpoint(trainer)
        resume = (
            f"The last good checkpoint is {ckpt}; resume with ckpt_path={ckpt} after changing the settings."
            if ckpt
            else "No checkpoint was written before this step."
        )
        term = "/".join(named) if named else "loss"
        raise NonFiniteLossError(
            f"non-finite training loss: term {term} is not finite at global step {step} (epoch {epoch}) on {where} "
            f"({shown}). Training stopped before this step changed the weights. {resume} Usual remedies: lower "
            "optim.lr, set trainer.gradient_clip_val (e.g. 1.0), use precision=32-true or bf16-mixed instead of "
            "16-mixed, lower drloc.lambda_drloc, or look for broken images in the data."
        )


class InterruptCheckpoint(pl.Callback):
    """On SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop), save a resumable checkpoint as ``last.ckpt``.

    Lightning stops a fit at the next batch boundary on either signal (SIGTERM as its
    ``SIGTERMException``, which alone would end the process with exit code 0) and calls
    ``on_exception``: the checkpoint is written there, with the loop state of the last finished step, so
    ``ckpt_path=last`` continues the run. ``signal`` says which signal stopped it (None: none did).
    """

    def __init__(self, dirpath: str | Path, filename: str = "last"):
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.signal: str | None = None
        self.saved: Path | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.signal = "SIGINT"
        elif isinstance(exception, SIGTERMException) or getattr(trainer, "received_sigterm", False):
            self.signal = "SIGTERM"
        else:
            return
        if trainer.global_step > 0 or trainer.current_epoch > 0:
            trainer.save_checkpoint(self.path)
            self.saved = self.path
