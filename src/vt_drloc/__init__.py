"""vt_drloc: the dense relative localization loss (DRLoc) for Vision Transformers, for Lightning.

Liu et al., "Efficient Training of Visual Transformers with Small Datasets", NeurIPS 2021.
"""

from vt_drloc.paths import DATA_ENV_VAR, default_data_root

__version__ = "0.1.0"

__all__ = ["DATA_ENV_VAR", "default_data_root", "__version__"]
