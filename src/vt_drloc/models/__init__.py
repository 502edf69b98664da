"""CvT and T2T-ViT for timm; importing this package registers the models with timm.

Registered names: ``cvt_13``, ``cvt_21``, ``cvt_13_c32``, ``cvt_21_c32``, ``cvt_13_drloc``
(see :mod:`vt_drloc.models.cvt`) ``t2t_vit_14``, ``t2t_vit_t_14``, ``t2t_vit_14_c32``, ``t2t_vit_t_14_c32``
(see :mod:`vt_drloc.models.t2t_vit`) and ``swin_ape_tiny_patch4_window7_224`` (timm's Swin with an absolute
position embedding, see :mod:`vt_drloc.models.swin_ape`).
"""

from vt_drloc.models import cvt, swin_ape, t2t_vit
from vt_drloc.models.cvt import CvT
from vt_drloc.models.swin_ape import SwinTransformerAPE
from vt_drloc.models.t2t_vit import T2TViT

MODEL_NAMES = (
    "cvt_13",
    "cvt_21",
    "cvt_13_c32",
    "cvt_13_drloc",
    "cvt_21_c32",
    "t2t_vit_14",
    "t2t_vit_t_14",
    "t2t_vit_14_c32",
    "t2t_vit_t_14_c32",
    "swin_ape_tiny_patch4_window7_224",
)

__all__ = ["CvT", "SwinTransformerAPE", "T2TViT", "MODEL_NAMES", "cvt", "swin_ape", "t2t_vit"]
