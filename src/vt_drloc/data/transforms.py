"""Train / eval transforms built with timm's ``create_transform`` (the DeiT / paper recipe).

Presets (``augment``):

* ``"paper"`` -- DeiT's recipe, used by Liu et al.: RandomResizedCrop, horizontal flip,
  RandAugment ``rand-m9-mstd0.5-inc1`` (colour jitter 0.4 when RandAugment is off), random erasing
  0.25 (pixel mode), bicubic interpolation. As in DeiT, when training at the dataset's native
  size of 32 px or less the RandomResizedCrop is replaced by a 4-px-padded RandomCrop.
* ``"basic"`` -- crop (as above) and horizontal flip only.
* ``"none"`` -- the eval transform.

Eval: resize the shorter side to ``img_size / crop_pct`` and centre-crop ``img_size``; at the
native size of 32 px or less, no resizing (DeiT's CIFAR practice).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageOps
from timm.data import auto_augment as timm_aa
from timm.data import create_transform
from torchvision import transforms as T

AUGMENT_PRESETS = ("paper", "basic", "none")
PAPER_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
PAPER_COLOR_JITTER = 0.4
PAPER_RE_PROB = 0.25
DEFAULT_CROP_PCT = 0.875


def safe_posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's ``posterize`` that also accepts 0 bits (an all-black image, as Pillow < 11 gave).

    timm's ``PosterizeIncreasing`` at magnitude 10 -- reached by ``rand-m9-mstd0.5`` through the
    magnitude noise -- asks for 0 bits, which current Pillow rejects with a ValueError that would
    kill a DataLoader worker mid-epoch.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(tf) -> None:
    """Swap timm's posterize for :func:`safe_posterize` in any RandAugment / AutoAugment of ``tf``."""
    for t in getattr(tf, "transforms", []):
        ops = list(getattr(t, "ops", []) or [])
        for sub in getattr(t, "policy", []) or []:
            ops += list(sub)
        for op in ops:
            if getattr(op, "aug_fn", None) is timm_aa.posterize:
                op.aug_fn = safe_posterize


def small_native(img_size: int, native_size: int | None) -> bool:
    """True when training at a small dataset's own resolution (CIFAR / SVHN at 32 px)."""
    return native_size is not None and img_size == native_size and img_size <= 32


def _pad_crop(img_size: int, native_size: int | None) -> list:
    ops: list = []
    if native_size != img_size:
        ops.append(T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC))
    ops.append(T.RandomCrop(img_size, padding=max(1, img_size // 8), padding_mode="constant"))
    return ops


def build_train_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    augment: str = "paper",
    native_size: int | None = None,
    auto_augment: str | None = None,
    color_jitter: float | None = None,
    re_prob: float | None = None,
    interpolation: str = "bicubic",
    scale: Sequence[float] = (0.08, 1.0),
    crop_pct: float | None = None,
):
    """Training transform: PIL image -> normalised float tensor (3, img_size, img_size).

    ``auto_augment`` / ``color_jitter`` / ``re_prob`` override the preset when not ``None``;
    ``auto_augment="none"`` disables RandAugment.
    """
    if augment not in AUGMENT_PRESETS:
        raise ValueError(f"augment={augment!r} is not a preset; choose one of {AUGMENT_PRESETS}")
    if augment == "none":
        return build_eval_transform(
            img_size, mean, std, native_size=native_size, interpolation=interpolation, crop_pct=crop_pct
        )
    paper = augment == "paper"
    aa = auto_augment if auto_augment is not None else (PAPER_AUTO_AUGMENT if paper else None)
    if aa is not None and str(aa).lower() in ("", "none", "null", "false"):
        aa = None
    cj = color_jitter if color_jitter is not None else (PAPER_COLOR_JITTER if paper else 0.0)
    re = re_prob if re_prob is not None else (PAPER_RE_PROB if paper else 0.0)
    tf = create_transform(
        input_size=img_size,
        is_training=True,
        scale=tuple(scale),
        hflip=0.5,
        color_jitter=cj if cj else None,
        auto_augment=aa,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        re_prob=re,
        re_mode="pixel",
        re_count=1,
    )
    _patch_posterize(tf)
    if small_native(img_size, native_size):
        # DeiT: a RandomResizedCrop of a 32-px image destroys it; pad-and-crop instead.
        tf.transforms = _pad_crop(img_size, native_size) + tf.transforms[1:]
    return tf


def build_eval_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    native_size: int | None = None,
    interpolation: str = "bicubic",
    crop_pct: float | None = None,
):
    """Eval transform: resize + centre crop (none at a small native size), tensor, normalise."""
    if small_native(img_size, native_size) and crop_pct is None:
        return T.Compose([T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])
    return create_transform(
        input_size=img_size,
        is_training=False,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        crop_pct=crop_pct if crop_pct is not None else DEFAULT_CROP_PCT,
    )
