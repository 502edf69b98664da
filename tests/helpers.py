"""Fault injection for the reliability tests (tests/test_reliability.py).

These callbacks are added to a real CLI run with ``+callbacks.<name>._target_=helpers.<Class>``;
the subprocess finds this module because the tests put ``tests/`` on its PYTHONPATH.
"""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class KillAt(pl.Callback):
    """Send ``sig`` to this process: SIGKILL (default: no cleanup, no finally blocks, like a pre-empted
    job), or SIGTERM / SIGINT (a scheduler's stop, Ctrl-C), which the run handles.

    ``epoch=E``: at the start of training epoch E, i.e. right after epoch E-1 and its checkpoint.
    ``after_epoch=E``: at the end of training epoch E.
    ``step=S``: at the start of the batch that would make optimizer step S+1 (global_step == S).
    """

    def __init__(
        self, epoch: int | None = None, step: int | None = None, after_epoch: int | None = None, sig: str = "SIGKILL"
    ):
        self.epoch, self.step, self.after_epoch, self.sig = epoch, step, after_epoch, getattr(signal, sig)

    def on_train_epoch_start(self, trainer, pl_module):
        if self.epoch is not None and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), self.sig)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.after_epoch is not None and trainer.current_epoch == self.after_epoch:
            os.kill(os.getpid(), self.sig)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.step is not None and trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)


class RaiseOnRank(pl.Callback):
    """Raise ``RuntimeError`` on one DDP rank at one optimizer step; the other ranks go on."""

    def __init__(self, rank: int = 1, step: int = 1):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(f"injected fault on rank {self.rank} at step {self.step}")


class PoisonLoss(pl.Callback):
    """Make one loss term of ``DrLocModule`` NaN / inf from optimizer step ``step`` on (CLI runs)."""

    def __init__(self, term: str = "drloc", step: int = 1, value: float = float("nan")):
        self.term, self.step, self.value = term, step, value

    def on_train_start(self, trainer, pl_module):
        import vt_drloc.faces.module as module

        term, step, value, original = self.term, self.step, self.value, None
        if term == "ce":
            original = module.classification_loss

            def poisoned(*args, **kwargs):
                out = original(*args, **kwargs)
                return out * value if trainer.global_step >= step else out

            module.classification_loss = poisoned
            self._restore = lambda: setattr(module, "classification_loss", original)
        else:
            head = pl_module.drloc
            original = head.forward

            def poisoned_forward(*args, **kwargs):
                out = original(*args, **kwargs)
                return out * value if trainer.global_step >= step else out

            head.forward = poisoned_forward
            self._restore = lambda: head.__dict__.pop("forward", None)

    def _undo(self):  # in-process tests run several trainings: never leave the patch behind
        restore, self._restore = getattr(self, "_restore", None), None
        if restore is not None:
            restore()

    def on_exception(self, trainer, pl_module, exception):
        self._undo()

    def on_train_end(self, trainer, pl_module):
        self._undo()
