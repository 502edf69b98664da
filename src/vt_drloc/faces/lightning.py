"""The DRLoc faces for ``lightning.pytorch`` (``import lightning as L``).

``vt_drloc.DrLocModule`` / ``DrLocCallback`` / ``ImageDataModule`` are built on ``pytorch_lightning``;
a project that trains with ``lightning.Trainer`` imports the same classes from here::

    import lightning as L
    from vt_drloc.lightning import DrLocCallback, DrLocModule

    L.Trainer(callbacks=[DrLocCallback(lambda_drloc=0.1)]).fit(MyModule(), datamodule)

They share every line of logic with the ``pytorch_lightning`` classes (see
:mod:`vt_drloc.base.lightning_api`); only the base classes and exception types differ.
"""

from __future__ import annotations

from vt_drloc.base.lightning_api import LightningAPI
from vt_drloc.core.errors import DrLocConfigError
from vt_drloc.data.datamodule import ImageDataModuleBase
from vt_drloc.faces.callback import DrLocCallbackBase
from vt_drloc.faces.module import DrLocModuleBase

LIGHTNING = LightningAPI.of("lightning.pytorch")

__all__ = ["LIGHTNING", "DrLocCallback", "DrLocConfigError", "DrLocModule", "ImageDataModule"]


class DrLocModule(DrLocModuleBase, LIGHTNING.LightningModule):
    __doc__ = DrLocModuleBase.__doc__


class DrLocCallback(DrLocCallbackBase, LIGHTNING.Callback):
    __doc__ = DrLocCallbackBase.__doc__
    lightning = LIGHTNING


class ImageDataModule(ImageDataModuleBase, LIGHTNING.LightningDataModule):
    __doc__ = ImageDataModuleBase.__doc__
