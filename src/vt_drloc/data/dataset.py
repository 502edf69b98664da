"""Map-style datasets over an image store, with optional in-memory uint8 cache and verification."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from vt_drloc.data.sources import SplitData
from vt_drloc.data.tar_folder import (
    ArrayStore,
    CorruptImageError,
    ImageStore,
    has_image_magic,
    looks_complete,
    probe_image,
)

log = logging.getLogger(__name__)

VERIFY_MODES = ("none", "header", "full")


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _check_header(store: ImageStore, i: int) -> None:
    """The cheap check: an image format's first bytes, and an end where the format says it ends.

    Only a file that fails either is decoded here, so a truncated image is found before training
    rather than mid-run, at one small extra read per file.
    """
    try:
        ends = store.read_ends(i, 32, 16)
    except OSError as exc:
        raise CorruptImageError(f"cannot read {store.where(i)}: {exc}") from exc
    if ends is None:
        return
    head, tail, size = ends
    if not has_image_magic(head):
        probe_image(store.read_bytes(i), store.where(i))
    elif not looks_complete(head, tail, size):
        try:
            store.load(i)
        except CorruptImageError as exc:
            raise CorruptImageError(
                f"truncated image {store.where(i)} ({size:,} bytes): {exc.__cause__ or exc}"
            ) from exc


def verify_samples(
    store: ImageStore, indices: np.ndarray, mode: str, skip_corrupt: bool
) -> tuple[np.ndarray, list[str]]:
    """Check that the samples ``indices`` of ``store`` are images, before any training.

    ``mode``: ``"none"``; ``"header"`` reads the first and last bytes of each file (catches
    non-image, empty and truncated files cheaply; only a file whose end looks wrong is decoded);
    ``"full"`` decodes every image.
    Returns ``(kept_indices, skipped_messages)``; raises :class:`CorruptImageError` naming the file
    on the first bad one unless ``skip_corrupt``.
    """
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify={mode!r} is not one of {VERIFY_MODES}")
    indices = np.asarray(indices, np.int64)
    if mode == "none" or isinstance(store, ArrayStore) or len(indices) == 0:
        return indices, []
    check: Callable[[int], None] = (
        (lambda i: _check_header(store, i)) if mode == "header" else (lambda i: store.load(i) and None)
    )

    def run(i: int) -> str | None:
        try:
            check(int(i))
        except CorruptImageError as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot read {store.where(int(i))}: {exc}"
        return None

    if mode == "full":
        with ThreadPoolExecutor(_threads()) as pool:  # PIL decodes without the GIL
            errors = list(pool.map(run, indices, chunksize=256))
    else:
        errors = [run(i) for i in indices]
    bad = [k for k, e in enumerate(errors) if e is not None]
    if bad and not skip_corrupt:
        raise CorruptImageError(
            f"{errors[bad[0]]}"
            + (f" (and {len(bad) - 1} more bad file(s))" if len(bad) > 1 else "")
            + ". Remove or replace it, or pass skip_corrupt=True to skip bad files and report them"
        )
    keep = np.delete(indices, bad)
    return keep, [errors[k] for k in bad]


class ImageCache:
    """Decoded images of a set of samples as uint8 HxWx3 arrays, held in memory.

    Same-sized images are stacked into one contiguous array, so forked DataLoader workers share
    it copy-on-write without touching per-image Python objects.
    """

    def __init__(self, store: ImageStore, indices: np.ndarray, skip_corrupt: bool = False) -> None:
        indices = np.asarray(indices, np.int64)
        if isinstance(store, ArrayStore):
            self.images = store.array[indices]
            self.kept = indices
            self.skipped: list[str] = []
            self.nbytes = int(self.images.nbytes)
            return

        def decode(i: int):
            try:
                return store.load_array(int(i))
            except CorruptImageError as exc:
                return exc

        with ThreadPoolExecutor(_threads()) as pool:  # PIL decodes without the GIL
            arrays = list(pool.map(decode, indices, chunksize=256))
        bad = [k for k, a in enumerate(arrays) if isinstance(a, Exception)]
        if bad and not skip_corrupt:
            raise CorruptImageError(
                f"{arrays[bad[0]]}. Remove or replace it, or pass skip_corrupt=True to skip bad files"
            )
        self.skipped = [str(arrays[k]) for k in bad]
        bad_set = set(bad)
        good = [a for k, a in enumerate(arrays) if k not in bad_set]
        self.kept = np.delete(indices, bad)
        shapes = {a.shape for a in good}
        self.images = np.stack(good) if len(shapes) == 1 else good
        self.nbytes = int(sum(a.nbytes for a in good))

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, k: int) -> np.ndarray:
        return self.images[k]


class ImageDataset(Dataset):
    """``(image_tensor, label)`` samples ``indices`` of a split, transformed by ``transform``.

    With ``cache`` given, images come from the decoded in-memory cache instead of the store.
    """

    def __init__(
        self, split: SplitData, indices: np.ndarray, transform: Callable | None = None, cache: ImageCache | None = None
    ) -> None:
        self.split = split
        self.cache: ImageCache | None = None
        self.indices = np.asarray(indices, np.int64)
        self.labels = split.labels[self.indices]
        self.transform = transform
        if cache is not None:
            self.set_cache(cache)

    def set_cache(self, cache: ImageCache) -> None:
        """Serve images from ``cache`` (built over this dataset's indices; drops skipped ones)."""
        if not np.isin(cache.kept, self.indices).all():
            raise ValueError("the cache holds samples that are not in this dataset")
        self.cache = cache
        self.indices = np.asarray(cache.kept, np.int64)
        self.labels = self.split.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def keys(self) -> list[str]:
        """Stable identifiers (relative paths) of the samples, in dataset order."""
        return [self.split.store.key(int(i)) for i in self.indices]

    def load_image(self, k: int) -> Image.Image:
        """The untransformed RGB image of sample ``k``."""
        if self.cache is not None:
            return Image.fromarray(self.cache[k])
        return self.split.store.load(int(self.indices[k]))

    def __getitem__(self, k: int):
        img = self.load_image(k)
        if self.transform is not None:
            threads = torch.get_num_threads()
            if threads > 1 and get_worker_info() is None:
                # In the main process (num_workers=0), per-image tensor ops are too small to gain
                # from intra-op threads, and under CPU contention OpenMP fan-out made them ~100x
                # slower (measured); workers already run single-threaded.
                torch.set_num_threads(1)
                try:
                    img = self.transform(img)
                finally:
                    torch.set_num_threads(threads)
            else:
                img = self.transform(img)
        return img, int(self.labels[k])
