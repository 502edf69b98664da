"""The DRLoc faces for ``lightning.pytorch`` (``import lightning as L``), at their public path.

The classes live in :mod:`vt_drloc.faces.lightning`; a project that trains with ``lightning.Trainer``
imports them from here::

    import lightning as L
    from vt_drloc.lightning import DrLocCallback, DrLocModule

    L.Trainer(callbacks=[DrLocCallback(lambda_drloc=0.1)]).fit(MyModule(), datamodule)
"""

from vt_drloc.faces.lightning import LIGHTNING, DrLocCallback, DrLocConfigError, DrLocModule, ImageDataModule

__all__ = ["LIGHTNING", "DrLocCallback", "DrLocConfigError", "DrLocModule", "ImageDataModule"]
