"""Find a dataset on disk and index its splits.

Accepted layouts, tried in this order for each searched directory ``d``:

1. ``d/<name>.tar`` -- an uncompressed archive holding ``<name>/<split>/<class>/<image>``
   (read in place, see :mod:`vt_drloc.data.tar_folder`);
2. ``d/<name>/<split>/<class>/<image>`` -- the same layout, extracted;
3. torchvision's own format for cifar10 (``d/cifar-10-batches-py/``), cifar100
   (``d/cifar-100-python/``), svhn (``d/train_32x32.mat``, ``d/test_32x32.mat``) and flowers102
   (``d/flowers-102/{jpg/,imagelabels.mat,setid.mat}``).

``root`` may also be the ``.tar`` file itself or the ``<name>/`` folder itself.
Split folders are ``train`` plus ``val`` (or ``valid``/``validation``) and/or ``test``.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vt_drloc.base.paths import DATA_ENV_VAR, data_root_candidates, default_data_root
from vt_drloc.data.specs import FLOWERS_FILES, SVHN_FILES, DatasetSpec
from vt_drloc.data.tar_folder import (
    IMG_EXTENSIONS,
    ArrayStore,
    CorruptImageError,
    DirStore,
    ImageStore,
    SubsetStore,
    TarStore,
    check_archive_sha256,
    read_tar_index,
)

log = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class DatasetNotFoundError(FileNotFoundError):
    """No usable copy of the dataset was found; the message lists every path searched."""


class DatasetLayoutError(ValueError):
    """The data was found but its layout is inconsistent (e.g. splits with different classes)."""


@dataclass
class SplitData:
    """One split: an image store and the integer label of each of its samples."""

    store: ImageStore
    labels: np.ndarray  # int64, one per store index

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class LoadedDataset:
    """All splits found for a dataset, with its class names (index = label)."""

    classes: list[str]
    splits: dict[str, SplitData]
    description: str
    skipped: list[str] = field(default_factory=list)


def select_classes(data: LoadedDataset, names: list[str] | tuple[str, ...]) -> LoadedDataset:
    """``data`` restricted to the classes ``names`` in every split, relabelled 0..k-1 in the data set's
    own class order (e.g. pretraining on five CIFAR-10 classes and fine-tuning on the other five)."""
    unknown = [n for n in names if n not in data.classes]
    if unknown or len(set(names)) != len(names) or not names:
        problem = f"unknown class(es) {unknown}" if unknown else ("repeated names" if names else "an empty list")
        raise DatasetLayoutError(
            f"classes={list(names)} has {problem}; {data.description} has the classes {data.classes}. "
            "Pass a non-empty list of distinct names from them"
        )
    keep = [i for i, c in enumerate(data.classes) if c in set(names)]
    new_label = np.full(len(data.classes), -1, np.int64)
    new_label[keep] = np.arange(len(keep))
    splits = {}
    for split, sd in data.splits.items():
        idx = np.flatnonzero(np.isin(sd.labels, keep))
        splits[split] = SplitData(SubsetStore(sd.store, idx), new_label[sd.labels[idx]])
    return LoadedDataset(
        [data.classes[i] for i in keep], splits, f"{data.description} ({len(keep)} of its classes)", data.skipped
    )


@dataclass(frozen=True)
class Location:
    """Where a dataset was found: ``kind`` is ``tar``, ``dir`` or ``torchvision``."""

    kind: str
    path: Path
    member_prefix: str = ""


def torchvision_default_root() -> Path:
    """Default torchvision download root: ``$TORCH_HOME/datasets`` (``~/.cache/torch/datasets``)."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "torch"
    )
    return Path(torch_home).expanduser() / "datasets"


# --------------------------------------------------------------------------------------------
# locating
# --------------------------------------------------------------------------------------------


def _torchvision_present(spec_name: str, d: Path) -> bool:
    if spec_name == "cifar10":
        return (d / "cifar-10-batches-py" / "data_batch_1").is_file()
    if spec_name == "cifar100":
        return (d / "cifar-100-python" / "train").is_file()
    if spec_name == "svhn":
        return (d / SVHN_FILES["train"][1]).is_file()
    if spec_name == "flowers102":
        return (d / "flowers-102" / FLOWERS_FILES["setid"][0]).is_file()
    return False


def _has_split_dirs(d: Path) -> bool:
    return (d / "train").is_dir()


def _check_dir(spec: DatasetSpec, d: Path, dname: str | None, explicit: bool, searched: list[str]) -> Location | None:
    if dname:
        tar = d / f"{dname}.tar"
        searched.append(str(tar))
        if tar.is_file():
            return Location("tar", tar)
        folder = d / dname
        searched.append(f"{folder}{os.sep}train{os.sep}")
        if _has_split_dirs(folder):
            return Location("dir", folder)
    if explicit:
        # root given as the dataset folder itself.
        searched.append(f"{d}{os.sep}train{os.sep}")
        if _has_split_dirs(d):
            return Location("dir", d)
    if spec.torchvision_marker:
        searched.append(f"{d}{os.sep}{spec.torchvision_marker} (torchvision format)")
        if _torchvision_present(spec.name, d):
            return Location("torchvision", d)
    return None


def search_roots(root: str | os.PathLike | None) -> tuple[list[Path], bool]:
    """Directories to search (and whether ``root`` was given explicitly)."""
    if root is not None:
        return [Path(root).expanduser()], True
    roots: list[Path] = []
    found = default_data_root()
    if found is not None:
        roots.append(found)
    roots.append(torchvision_default_root())
    return roots, False


def locate(spec: DatasetSpec, root: str | os.PathLike | None, folder_name: str | None) -> Location:
    """Find the dataset, or raise :class:`DatasetNotFoundError` listing what was searched."""
    dname = folder_name if spec.name == "folder" else spec.name
    searched: list[str] = []
    roots, explicit = search_roots(root)
    for d in roots:
        if explicit and d.is_file():
            if d.suffix.lower() != ".tar":
                raise DatasetNotFoundError(
                    f"root {str(d)!r} is a file but not an uncompressed .tar archive; pass a .tar "
                    f"of <{dname or 'name'}>/<split>/<class>/<image> or a directory"
                )
            return Location("tar", d)
        if explicit and not d.exists():
            searched.append(f"{d} (does not exist)")
            continue
        loc = _check_dir(spec, d, dname, explicit, searched)
        if loc is not None:
            return loc
    raise DatasetNotFoundError(_not_found_message(spec, dname, root, searched))


def _not_found_message(spec: DatasetSpec, dname: str | None, root, searched: list[str]) -> str:
    lines = [f"Dataset {spec.name!r} not found" + (f" (root={str(root)!r})." if root is not None else ".")]
    lines.append("Searched:")
    lines += [f"  {s}" for s in searched]
    if root is None:
        lines.append("Data-root candidates checked for *.tar archives (first hit is used):")
        lines += [f"  {p}" for p in data_root_candidates()]
    lines.append("How to get it:")
    what = dname or "<name>"
    lines.append(
        f"  - put {what}.tar (layout {what}/<split>/<class>/<image>) or the extracted "
        f"{what}/ folder in a directory and pass root=<that directory>, or set "
        f"{DATA_ENV_VAR}=<that directory>;"
    )
    if spec.name == "folder" and not dname:
        lines.append("  - for name='folder', pass folder_name=<name> or root=<the dataset folder or .tar>;")
    if spec.torchvision_marker:
        lines.append(
            f"  - or {spec.download_hint} to have prepare_data() download it into "
            f"{str(root) if root is not None else torchvision_default_root()}."
        )
    else:
        lines.append(f"  - {spec.download_hint}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# folder / tar layout
# --------------------------------------------------------------------------------------------


def _split_of(first: str, where: str, seen: dict[str, str]) -> str | None:
    split = SPLIT_ALIASES.get(first.lower())
    if split is None:
        return None
    if split in seen and seen[split] != first:
        raise DatasetLayoutError(
            f"{where} has two folders for the {split!r} split: {seen[split]!r} and {first!r}; keep one"
        )
    seen[split] = first
    return split


def _group_layout(
    rel_paths: list[str], where: str, skip_corrupt: bool, skipped: list[str]
) -> dict[str, dict[str, list[str]]]:
    """``{split: {class: [rel_path, ...]}}`` from paths relative to the dataset folder.

    Files outside ``<split>/<class>/`` (e.g. ``classes.tsv`` next to the split folders) and hidden
    files are ignored; files in a class folder without an image extension are an error unless
    ``skip_corrupt``.
    """
    layout: dict[str, dict[str, list[str]]] = {}
    seen: dict[str, str] = {}
    ignored_splits: set[str] = set()
    for rel in rel_paths:
        parts = rel.split("/")
        if any(p.startswith(".") for p in parts):
            continue
        if len(parts) < 3:
            continue
        split = _split_of(parts[0], where, seen)
        if split is None:
            ignored_splits.add(parts[0])
            continue
        if not rel.lower().endswith(IMG_EXTENSIONS):
            msg = f"non-image file in a class folder: {where}/{rel}"
            if skip_corrupt:
                skipped.append(msg)
                continue
            raise CorruptImageError(
                f"{msg} (image extensions: {', '.join(IMG_EXTENSIONS)}); remove it, or pass "
                "skip_corrupt=True to skip such files and report them"
            )
        layout.setdefault(split, {}).setdefault(parts[1], []).append(rel)
    if ignored_splits:
        log.info("%s: ignoring folders that are not splits: %s", where, sorted(ignored_splits))
    return layout


def _layout_to_splits(
    layout: dict[str, dict[str, list[str]]], where: str, make_store
) -> tuple[list[str], dict[str, SplitData]]:
    if "train" not in layout:
        raise DatasetLayoutError(
            f"{where} has no images under a train/<class>/ folder; expected "
            "<split>/<class>/<image> with splits train, val (or valid) and/or test"
        )
    classes = sorted(layout["train"])
    class_set = set(classes)
    for split, by_class in layout.items():
        if set(by_class) != class_set:
            missing = sorted(class_set - set(by_class))
            extra = sorted(set(by_class) - class_set)
            raise DatasetLayoutError(
                f"the class folders of split {split!r} differ from those of 'train' in {where}: "
                f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
                f"extra {extra[:10]}{' ...' if len(extra) > 10 else ''}. Every split needs the same "
                "class folders (the label of a class is its rank in the sorted folder names)"
            )
    label_of = {c: i for i, c in enumerate(classes)}
    splits: dict[str, SplitData] = {}
    for split, by_class in layout.items():
        rels = sorted(r for files in by_class.values() for r in files)
        labels = np.asarray([label_of[r.split("/", 2)[1]] for r in rels], np.int64)
        splits[split] = SplitData(make_store(rels), labels)
    return classes, splits


def load_tar(path: Path, dname: str | None, skip_corrupt: bool) -> LoadedDataset:
    """Index ``<dname>/<split>/<class>/<image>`` inside an uncompressed tar archive.

    A ``SHA256SUMS`` beside the archive is checked first (about 0.3 s per 100 MB, once per process),
    and an archive cut short is refused while indexing: either is a :class:`CorruptArchiveError`.
    """
    check_archive_sha256(path)
    index = read_tar_index(path)
    names = index.names
    prefix = ""
    if dname and any(n.startswith(dname + "/") for n in names):
        prefix = dname + "/"
    elif not any(n.split("/", 1)[0].lower() in SPLIT_ALIASES for n in names):
        tops = sorted({n.split("/", 1)[0] for n in names if "/" in n})
        if len(tops) == 1:
            prefix = tops[0] + "/"
        else:
            raise DatasetLayoutError(
                f"archive {path} holds no {dname or '<name>'}/<split>/<class>/<image> layout; its top-level entries "
                f"are {tops[:10]}"
            )
    where = f"{path}:{prefix.rstrip('/')}" if prefix else str(path)
    pos = {n[len(prefix) :]: i for i, n in enumerate(names) if n.startswith(prefix)}
    skipped: list[str] = []
    layout = _group_layout(list(pos), where, skip_corrupt, skipped)

    def make_store(rels: list[str]) -> TarStore:
        idx = np.asarray([pos[r] for r in rels], np.int64)
        return TarStore(path, rels, index.offsets[idx], index.sizes[idx], member_prefix=prefix)

    classes, splits = _layout_to_splits(layout, where, make_store)
    return LoadedDataset(classes, splits, f"tar archive {where}", skipped)


def load_dir(folder: Path, skip_corrupt: bool) -> LoadedDataset:
    """Index ``<folder>/<split>/<class>/<image>``."""
    rels: list[str] = []
    empty: list[str] = []
    for split_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if split_dir.name.lower() not in SPLIT_ALIASES:
            continue
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            n_before = len(rels)
            for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel_dir = Path(dirpath).relative_to(folder).as_posix()
                rels += [f"{rel_dir}/{f}" for f in filenames if not f.startswith(".")]
            if len(rels) == n_before:
                empty.append(f"{split_dir.name}/{class_dir.name}")
    if empty:
        raise DatasetLayoutError(
            f"{folder} has empty class folders: {empty[:10]}{' ...' if len(empty) > 10 else ''}; "
            "remove them or add images (every split needs the same, non-empty class folders)"
        )
    skipped: list[str] = []
    layout = _group_layout(rels, str(folder), skip_corrupt, skipped)
    classes, splits = _layout_to_splits(layout, str(folder), lambda r: DirStore(folder, r))
    return LoadedDataset(classes, splits, f"folder {folder}", skipped)


# --------------------------------------------------------------------------------------------
# torchvision formats
# --------------------------------------------------------------------------------------------


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _load_cifar(
    d: Path, base: str, train_files: list[str], test_file: str, meta_file: str, label_key: str, names_key: str
) -> LoadedDataset:
    """torchvision's CIFAR-10/100 pickles, read directly. torchvision's ``CIFAR10`` / ``CIFAR100``
    classes refuse any copy whose md5 differs from the original download ("Dataset not found or
    corrupted"): re-packed copies and the tests' small fixtures in the same format. Reading the
    pickles takes these few lines and keeps both working."""
    folder = d / base
    splits: dict[str, SplitData] = {}
    for split, files in (("train", train_files), ("test", [test_file])):
        arrays, labels = [], []
        for name in files:
            path = folder / name
            if not path.is_file():
                raise DatasetNotFoundError(
                    f"{path} is missing (torchvision {base}/ format); re-download with download=True"
                )
            entry = _unpickle(path)
            arrays.append(np.asarray(entry["data"], np.uint8))
            labels += list(entry[label_key] if label_key in entry else entry["labels"])
        data = np.vstack(arrays).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        store = ArrayStore(data, key_prefix=f"{split}/", where_prefix=f"{folder}/{split}")
        splits[split] = SplitData(store, np.asarray(labels, np.int64))
    classes = list(_unpickle(folder / meta_file)[names_key])
    return LoadedDataset(classes, splits, f"torchvision {base}/ in {d}")


def load_mat(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a MATLAB ``.mat`` file, read by ``scipy.io.loadmat`` as torchvision's own SVHN and
    Flowers-102 read them (MATLAB shapes kept); an unreadable file is a :class:`DatasetLayoutError`."""
    import scipy.io

    try:
        return {k: v for k, v in scipy.io.loadmat(path).items() if isinstance(v, np.ndarray)}
    except (ValueError, NotImplementedError, OSError) as err:  # not a MAT file / v7.3 (HDF5) / truncated
        raise DatasetLayoutError(f"{path} cannot be read as a MATLAB .mat file ({type(err).__name__}: {err})") from None


def _load_svhn(d: Path) -> LoadedDataset:
    """torchvision's SVHN ``.mat`` files through ``scipy.io.loadmat``, as torchvision reads them; not
    through ``torchvision.datasets.SVHN``, which refuses any file whose md5 differs from the
    original download (the tests' fixtures in the same format)."""
    splits: dict[str, SplitData] = {}
    for split in ("train", "test"):
        path = d / SVHN_FILES[split][1]
        if not path.is_file():
            raise DatasetNotFoundError(f"{path} is missing (torchvision SVHN format); download it with download=True")
        mat = load_mat(path)
        if "X" not in mat or "y" not in mat:
            raise DatasetLayoutError(f"{path} lacks the 'X' / 'y' arrays of an SVHN .mat file")
        data = np.ascontiguousarray(mat["X"].transpose(3, 0, 1, 2)).astype(np.uint8)  # HWCN -> NHWC
        labels = mat["y"].astype(np.int64).reshape(-1)
        labels[labels == 10] = 0  # SVHN stores digit 0 as label 10 (as torchvision remaps)
        store = ArrayStore(data, key_prefix=f"{split}/", where_prefix=str(path))
        splits[split] = SplitData(store, labels)
    return LoadedDataset([str(i) for i in range(10)], splits, f"torchvision SVHN .mat files in {d}")


def _load_flowers(d: Path) -> LoadedDataset:
    base = d / "flowers-102"
    setid = load_mat(base / FLOWERS_FILES["setid"][0])
    labels_all = load_mat(base / FLOWERS_FILES["label"][0])["labels"].reshape(-1).astype(np.int64) - 1
    splits: dict[str, SplitData] = {}
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        ids = np.sort(setid[key].reshape(-1).astype(np.int64))
        keys = [f"image_{i:05d}.jpg" for i in ids]
        splits[split] = SplitData(DirStore(base / "jpg", keys), labels_all[ids - 1])
    try:
        from torchvision.datasets import Flowers102

        classes = list(Flowers102.classes)
    except (ImportError, AttributeError):  # older torchvision: numeric names
        classes = [f"{i:03d}" for i in range(102)]
    return LoadedDataset(classes, splits, f"torchvision flowers-102/ in {d}")


def load_location(spec: DatasetSpec, loc: Location, folder_name: str | None, skip_corrupt: bool) -> LoadedDataset:
    """Index every split of the dataset found at ``loc``."""
    dname = folder_name if spec.name == "folder" else spec.name
    if loc.kind == "tar":
        return load_tar(loc.path, dname, skip_corrupt)
    if loc.kind == "dir":
        return load_dir(loc.path, skip_corrupt)
    if spec.name == "cifar10":
        return _load_cifar(
            loc.path,
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
            "batches.meta",
            "labels",
            "label_names",
        )
    if spec.name == "cifar100":
        return _load_cifar(loc.path, "cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names")
    if spec.name == "svhn":
        return _load_svhn(loc.path)
    if spec.name == "flowers102":
        return _load_flowers(loc.path)
    raise ValueError(f"no torchvision format for {spec.name!r}")  # pragma: no cover


def download(spec: DatasetSpec, root: Path) -> None:
    """Download ``spec``'s dataset in torchvision's format into ``root`` (network access)."""
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    root.mkdir(parents=True, exist_ok=True)
    if spec.name == "cifar10":
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
    elif spec.name == "cifar100":
        from torchvision.datasets import CIFAR100

        CIFAR100(str(root), train=True, download=True)
    elif spec.name == "svhn":
        for url, filename, md5 in SVHN_FILES.values():
            download_url(url, str(root), filename, md5)
    elif spec.name == "flowers102":
        from vt_drloc.data.specs import FLOWERS_URL_PREFIX

        base = root / "flowers-102"
        name, md5 = FLOWERS_FILES["image"]
        if not (base / "jpg").is_dir():
            download_and_extract_archive(FLOWERS_URL_PREFIX + name, str(base), md5=md5)
        for key in ("label", "setid"):
            name, md5 = FLOWERS_FILES[key]
            download_url(FLOWERS_URL_PREFIX + name, str(base), md5=md5)
    else:
        raise ValueError(f"{spec.name!r} cannot be downloaded: {spec.download_hint}")
