"""What a checkpoint must know about its data to be used on new images: the class names and the
eval preprocessing (size, normalisation, resize / crop). ``DrLocModule`` records it from the
datamodule in ``setup`` and saves it in every checkpoint as ``checkpoint["data_info"]``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vt_drloc.data.transforms import DEFAULT_CROP_PCT, build_eval_transform, small_native

DATA_INFO_KEYS = ("dataset", "class_names", "img_size", "mean", "std", "interpolation", "crop_pct", "native_size")


def data_info_of(datamodule: Any) -> dict[str, Any]:
    """The class names and eval preprocessing of a set-up ``ImageDataModule`` ({} for other datamodules)."""
    try:
        class_names = [str(name) for name in datamodule.class_names]
    except (AttributeError, RuntimeError):  # not an ImageDataModule, or not set up
        return {}
    hparams = getattr(datamodule, "hparams", {}) or {}
    return {
        "dataset": getattr(datamodule, "name", None),
        "class_names": class_names,
        "img_size": int(datamodule.img_size),
        "mean": [float(v) for v in datamodule.mean],
        "std": [float(v) for v in datamodule.std],
        "interpolation": str(hparams.get("interpolation", "bicubic")),
        "crop_pct": None if hparams.get("crop_pct") is None else float(hparams["crop_pct"]),
        "native_size": getattr(datamodule, "native_size", None),
    }


def eval_transform_of(info: Mapping[str, Any]):
    """The eval transform (PIL image -> normalised tensor) that the run validated and tested with."""
    return build_eval_transform(
        int(info["img_size"]),
        info["mean"],
        info["std"],
        native_size=info.get("native_size"),
        interpolation=info.get("interpolation") or "bicubic",
        crop_pct=info.get("crop_pct"),
    )


def timm_pretrained_cfg(info: Mapping[str, Any]) -> dict[str, Any]:
    """The same preprocessing in timm's ``pretrained_cfg`` terms (for timm's own ``create_transform``).

    At a small native size (CIFAR at 32 px) the run does not resize or crop: ``crop_pct`` 1.0."""
    size = int(info["img_size"])
    crop_pct = info.get("crop_pct")
    if crop_pct is None:
        crop_pct = 1.0 if small_native(size, info.get("native_size")) else DEFAULT_CROP_PCT
    return {
        "input_size": [3, size, size],
        "mean": [float(v) for v in info["mean"]],
        "std": [float(v) for v in info["std"]],
        "interpolation": info.get("interpolation") or "bicubic",
        "crop_pct": float(crop_pct),
        "crop_mode": "center",
        "num_classes": len(info["class_names"]),
    }


def predict_transform_of(info: Mapping[str, Any]):
    """:func:`eval_transform_of` for images of any size: at a small native size the run's eval
    transform does not resize (its images are all 32 px); new images are resized (shorter side) and
    centre-cropped to it first, which leaves an image already of that size unchanged."""
    size = int(info["img_size"])
    transform = eval_transform_of(info)
    if small_native(size, info.get("native_size")) and info.get("crop_pct") is None:
        from torchvision import transforms as T

        resize = T.Resize(size, interpolation=T.InterpolationMode(info.get("interpolation") or "bicubic"))
        return T.Compose([resize, T.CenterCrop(size), *transform.transforms])
    return transform
