"""vt_drloc: the dense relative localization loss (DRLoc) for Vision Transformers, for Lightning.

Liu et al., "Efficient Training of Visual Transformers with Small Datasets", NeurIPS 2021.

>>> from vt_drloc import DrLocModule
>>> module = DrLocModule("vit_tiny_patch16_224", num_classes=10, lambda_drloc=0.1,
...                      model_kwargs={"img_size": 32, "patch_size": 4, "depth": 2})
"""

from vt_drloc import models, old_paths  # noqa: F401 (importing registers cvt_13, cvt_21, t2t_vit_14, ... with timm)
from vt_drloc.base.paths import DATA_ENV_VAR, default_data_root
from vt_drloc.core import (
    DRLOC_MODES,
    HEAD_PRESETS,
    SCHEDULES,
    TARGETS,
    DrLocHead,
    DrLocLoss,
    MultiScaleDrLocLoss,
    drloc_lambda,
    offset_targets,
    reduce_grid,
    sample_cell_pairs,
)
from vt_drloc.core.discover import GridSource
from vt_drloc.core.errors import DrLocConfigError
from vt_drloc.core.tap import GridInfo, GridTapError, probe_grid, tap_grid

old_paths.install()  # old flat module paths (vt_drloc.module, ...) still import, with a DeprecationWarning

# The Lightning faces are imported on first use (PEP 562), so `import vt_drloc.core` (and anything else
# that needs no Lightning, such as `import vt_drloc` to register the models with timm) loads no Lightning.
_FACES = {"DrLocCallback": "vt_drloc.faces.callback", "DrLocModule": "vt_drloc.faces.module"}


def __getattr__(name: str):
    if name in _FACES:
        import importlib

        value = getattr(importlib.import_module(_FACES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vt_drloc' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "DATA_ENV_VAR",
    "DRLOC_MODES",
    "HEAD_PRESETS",
    "SCHEDULES",
    "TARGETS",
    "DrLocCallback",
    "DrLocConfigError",
    "DrLocHead",
    "DrLocLoss",
    "DrLocModule",
    "GridInfo",
    "GridSource",
    "GridTapError",
    "MultiScaleDrLocLoss",
    "default_data_root",
    "drloc_lambda",
    "offset_targets",
    "probe_grid",
    "reduce_grid",
    "sample_cell_pairs",
    "tap_grid",
    "__version__",
]


def __dir__() -> list[str]:
    return sorted(__all__)
