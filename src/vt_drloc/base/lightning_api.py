"""The pieces of a Lightning package the DRLoc faces use, for either package.

Lightning ships twice: ``pytorch_lightning`` and ``lightning.pytorch`` are separate copies whose
Trainers accept only their own ``LightningModule`` / ``Callback`` classes and raise their own
exception types. The faces (:mod:`vt_drloc.faces.module`, :mod:`vt_drloc.faces.callback`,
:mod:`vt_drloc.data.datamodule`) are written once against a :class:`LightningAPI` and built for
each package: ``vt_drloc.DrLocModule`` etc. for ``pytorch_lightning``, and
``vt_drloc.lightning.DrLocModule`` etc. for ``lightning.pytorch`` (``import lightning as L``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

PACKAGES = ("pytorch_lightning", "lightning.pytorch")


@dataclass(frozen=True)
class LightningAPI:
    """Classes and helpers of one Lightning package, looked up by name."""

    package: str
    pl: ModuleType
    LightningModule: type
    LightningDataModule: type
    Callback: type
    MisconfigurationException: type
    sharded_strategies: tuple[type, ...]
    rank_zero_warn: Any
    rank_zero_info: Any
    is_overridden: Any

    @classmethod
    def of(cls, package: str) -> LightningAPI:
        if package not in PACKAGES:
            raise ValueError(f"package={package!r} is not a Lightning package; choose one of {', '.join(map(repr, PACKAGES))}")
        pl = importlib.import_module(package)
        strategies = importlib.import_module(f"{package}.strategies")
        utilities = importlib.import_module(f"{package}.utilities")
        exceptions = importlib.import_module(f"{package}.utilities.exceptions")
        model_helpers = importlib.import_module(f"{package}.utilities.model_helpers")
        return cls(
            package=package,
            pl=pl,
            LightningModule=pl.LightningModule,
            LightningDataModule=pl.LightningDataModule,
            Callback=pl.Callback,
            MisconfigurationException=exceptions.MisconfigurationException,
            sharded_strategies=tuple(
                getattr(strategies, name)
                for name in ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")
                if hasattr(strategies, name)
            ),
            rank_zero_warn=utilities.rank_zero_warn,
            rank_zero_info=utilities.rank_zero_info,
            is_overridden=model_helpers.is_overridden,
        )


PYTORCH_LIGHTNING = LightningAPI.of("pytorch_lightning")


def training_dataset(trainer: Any) -> Any:
    """The dataset the trainer will fit on, found without iterating any loader (None if unknown).

    At ``setup("fit")`` the fit loop has not built its loaders yet, and Lightning offers no public
    handle on what ``fit`` was given: the data source is read from ``fit_loop._data_source`` (the same
    attribute in both packages since 2.0), falling back to the trainer's datamodule."""
    source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
    loader = getattr(source, "instance", None)
    if loader is not None and not hasattr(loader, "dataset") and hasattr(loader, "train_dataloader"):
        loader = loader.train_dataloader()  # a datamodule or module given to fit
    if loader is None and getattr(trainer, "datamodule", None) is not None:
        loader = trainer.datamodule.train_dataloader()
    if isinstance(loader, Mapping):
        loader = next(iter(loader.values()), None)
    elif isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    return getattr(loader, "dataset", None)
