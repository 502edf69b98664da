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
            raise ValueError(
                f"package={package!r} is not a Lightning package; choose one of {', '.join(map(repr, PACKAGES))}"
            )
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
