"""Deprecated import path: the DRLoc core moved to :mod:`vt_drloc.core` (vt_drloc 0.2); this module
re-exports its names for one release."""

import warnings

from vt_drloc.core import *  # noqa: F403
from vt_drloc.core import __all__  # noqa: F401

warnings.warn("vt_drloc.drloc moved to vt_drloc.core; import from there", DeprecationWarning, stacklevel=2)
