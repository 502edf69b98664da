"""Files written whole or not at all: checkpoints, ``results.json``, sweep and study summaries.

One helper, :func:`write_atomic`, serves them all: a reader (a resumed run, a report, a second
process) sees either the previous file or the complete new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_PREFIX = ".tmp-"  # temporary files: hidden, and never ending in the target's suffix (.ckpt, .json)

#: DRLoc options added after the first vt_drloc runs were written, with the behaviour those runs had
#: (docs/fidelity.md rows 3, 5, 6): a checkpoint's hyper-parameters or a ``results.json`` that lacks one was
#: produced this way. One table for the faces (loading old checkpoints) and the report (marking old rows).
EARLIER_DEFAULTS = {"tap_norm": "post", "head_init": "torch", "class_head": "fused"}


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. not supported on this platform / filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None]) -> Path:
    """Write ``data`` (bytes, or a function that writes into the open binary file) to ``path``.

    The bytes go to a temporary file beside ``path`` (same filesystem, so the rename is atomic),
    are flushed and fsync'ed, and the file is renamed over ``path`` with ``os.replace``. Until that
    rename ``path`` keeps its previous content; on any error the temporary file is removed. A
    SIGKILL in the middle can leave a hidden ``.tmp-*`` file behind, which nothing reads.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())  # mkstemp makes it private; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path
