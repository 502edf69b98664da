"""Deprecated import path: the grid tap moved to :mod:`vt_drloc.core.tap` (vt_drloc 0.2); this module
re-exports its names for one release."""

import warnings

from vt_drloc.core.tap import *  # noqa: F403
from vt_drloc.core.tap import GridCapture, GridInfo, GridTapError, find_backbone, probe_grid, tap_grid  # noqa: F401

warnings.warn("vt_drloc.tap moved to vt_drloc.core.tap; import from there", DeprecationWarning, stacklevel=2)
