"""A user's own LightningModule class for the app's ``module._target_`` (tests/test_train.py)."""

from __future__ import annotations

from vt_drloc import DrLocModule


class TaggedModule(DrLocModule):
    """DrLocModule with a project-specific extra: it counts its training steps."""

    def __init__(self, *args, tag: str = "mine", **kwargs):
        super().__init__(*args, **kwargs)
        self.tag = tag
        self.steps_seen = 0

    def training_step(self, batch, batch_idx):
        self.steps_seen += 1
        return super().training_step(batch, batch_idx)
