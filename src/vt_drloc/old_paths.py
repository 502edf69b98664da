"""Old import paths of the modules that moved into rooms in vt_drloc 0.2, kept loadable for one release.

``vt_drloc.module`` was the flat module that is now ``vt_drloc.faces.module``, and so on (:data:`MOVED`).
Run folders and checkpoints written before the move name classes by their old path (Hydra ``_target_``
keys such as ``vt_drloc.module.DrLocModule``), so importing an old path gives the very module object
of the new one, with one ``DeprecationWarning`` naming the new path. The command-line entry points
(``python -m vt_drloc.train|eval|export|predict``) are real modules, not aliases.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    "vt_drloc.callback": "vt_drloc.faces.callback",
    "vt_drloc.module": "vt_drloc.faces.module",
    "vt_drloc.objective": "vt_drloc.faces.objective",
    "vt_drloc.optim": "vt_drloc.faces.optim",
    "vt_drloc.lightning_api": "vt_drloc.base.lightning_api",
    "vt_drloc.files": "vt_drloc.base.files",
    "vt_drloc.paths": "vt_drloc.base.paths",
    "vt_drloc.config": "vt_drloc.app.config",
    "vt_drloc.checkpoints": "vt_drloc.app.checkpoints",
    "vt_drloc.results": "vt_drloc.app.results",
    "vt_drloc.reliability": "vt_drloc.app.reliability",
    "vt_drloc.progress": "vt_drloc.app.progress",
    "vt_drloc.run_folder": "vt_drloc.app.run_folder",
    "vt_drloc.pos_embed": "vt_drloc.app.pos_embed",
    "vt_drloc.data_info": "vt_drloc.data.info",
}
# Old paths still imported inside the project by code another change owns (report/ writes its files with
# vt_drloc.files until its next edit): loadable without a warning, so they do not warn on every report run.
QUIET = {"vt_drloc.files"}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path of :data:`MOVED` to the module at its new path."""

    def __init__(self) -> None:
        self.specs: dict[str, importlib.machinery.ModuleSpec | None] = {}  # each new module's own spec

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        if spec.name not in QUIET:
            warnings.warn(f"{spec.name} moved to {new}; import from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self.specs[new] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system stamped the old path's spec on the (already executed) module: give it its own back
        module.__spec__ = self.specs[module.__name__]


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        # first: an old path must never load a stale file of the same name (an editable install elsewhere)
        sys.meta_path.insert(0, MovedModuleFinder())
