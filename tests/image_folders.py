"""Tiny image-folder datasets (``root/name/<split>/<class>/<i>.<ext>``) written by the data tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image


def make_image_folder(
    root: Path,
    name: str = "toy",
    classes: Sequence[str] = ("cat", "dog", "emu"),
    per_class: int | Mapping[str, int] = 4,
    splits: Sequence[str] = ("train", "val"),
    size: int = 10,
    ext: str = "jpg",
    vary_height: bool = False,
) -> Path:
    """Distinct solid-colour images per split, class and index; ``vary_height`` makes image ``i``
    ``size x (size + i)`` so sizes differ too. ``per_class`` is one count or a count per split."""
    for s_i, split in enumerate(splits):
        count = per_class[split] if isinstance(per_class, Mapping) else per_class
        for c_i, cls in enumerate(classes):
            folder = root / name / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                colour = (40 * c_i + 5, 10 * i + 3, 60 * s_i + 1)
                Image.new("RGB", (size, size + i if vary_height else size), colour).save(folder / f"{i:03d}.{ext}")
    return root / name
