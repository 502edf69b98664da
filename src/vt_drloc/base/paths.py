"""Where the offline data archives live.

The project's real data (``cifar10.tar``, ``flowers102.tar``) sits outside the repository, in
``../shared/data`` next to the checkout. ``VT_DRLOC_DATA`` overrides the search.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "VT_DRLOC_DATA"


def data_root_candidates() -> list[Path]:
    """Directories searched, in order, for the data archives."""
    candidates: list[Path] = []
    if os.environ.get(DATA_ENV_VAR):
        candidates.append(Path(os.environ[DATA_ENV_VAR]).expanduser())
    here = Path(__file__).resolve()
    # src/vt_drloc/paths.py -> repository root is parents[2]; the archives sit beside it.
    for parent in (Path.cwd(), *here.parents):
        candidates.append(parent / ".." / "shared" / "data")
        candidates.append(parent / "shared" / "data")
    unique: list[Path] = []
    for path in candidates:
        resolved = path.resolve()
        if resolved not in unique:
            unique.append(resolved)
    return unique


def default_data_root() -> Path | None:
    """First candidate directory that holds at least one ``*.tar`` archive, else ``None``."""
    for path in data_root_candidates():
        if path.is_dir() and any(path.glob("*.tar")):
            return path
    return None
