"""The rooms of src/vt_drloc and the one direction of their imports, checked on the code itself.

core (pure PyTorch) and models know nothing above them; the Lightning faces build on core; the app
composes everything; report reads files only. See README, "How the code is organised".
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vt_drloc.old_paths import MOVED, QUIET

SRC = Path(__file__).resolve().parents[1] / "src" / "vt_drloc"

# room of each module (dotted name without the "vt_drloc." prefix); the first matching prefix wins. Each room
# is a folder of src/vt_drloc, except the package's own entry files at the top.
ROOMS = {
    "core": "core",
    "models": "models",
    "base": "base",
    "data": "data",
    "faces": "faces",
    "app": "app",
    "report": "report",
    "": "package",  # vt_drloc/__init__.py: the public names
    "__main__": "package",  # python -m vt_drloc / vt_drloc.train|eval|export|predict: call the app's main
    "train": "package",
    "eval": "package",
    "export": "package",
    "predict": "package",
    "lightning": "package",  # the faces for the `lightning` package, at their public path
    "old_paths": "package",  # old flat module paths (vt_drloc.module, ...) kept loadable
    "drloc": "package",  # deprecated import paths, re-exports of core
    "tap": "package",
    "conf": "package",  # a checkout's link to conf/ (installed as vt_drloc.conf): yaml only
}
# what each room may import (besides itself)
ALLOWED = {
    "base": set(),
    "core": set(),
    "models": set(),
    "data": {"base"},
    "faces": {"core", "models", "data", "base"},
    "app": {"core", "models", "data", "base", "faces"},
    "report": {"base"},
    "package": {"core", "models", "data", "base", "faces", "app"},
}
LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def room_of(name: str) -> str:
    for prefix, room in sorted(ROOMS.items(), key=lambda kv: -len(kv[0])):
        if prefix and (name == prefix or name.startswith(prefix + ".")):
            return room
    assert name == "", f"module vt_drloc.{name} belongs to no room: add it to ROOMS"
    return ROOMS[""]


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, list[str]]]:
    """(module imported, names) for every ``vt_drloc`` import in ``path`` (module level only if asked)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # TYPE_CHECKING blocks count as module level
            nodes.extend(node.body)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vt_drloc"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names if a.name.startswith("vt_drloc"))
    return found


MODULES = sorted(SRC.rglob("*.py"))


def test_every_module_has_a_room():
    for path in MODULES:
        room_of(module_name(path))


def test_imports_go_one_way():
    wrong = []
    for path in MODULES:
        name = module_name(path)
        room = room_of(name)
        for target, _ in imports(path):
            target = MOVED.get(target, target)  # an old flat path imports the moved module
            other = room_of(target.removeprefix("vt_drloc").lstrip("."))
            if other != room and other not in ALLOWED[room]:
                wrong.append(f"vt_drloc.{name} ({room}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_another_modules_private_names():
    wrong = [
        f"vt_drloc.{module_name(path)} imports {name} from {target}"
        for path in MODULES
        for target, names in imports(path)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        name = "vt_drloc." + module_name(path) if module_name(path) else "vt_drloc"
        targets = set()
        for target, names in imports(path, top_level_only=True):
            # `from vt_drloc.pkg import submodule` depends on the submodule, not on the package's __init__
            subs = [
                f"{target}.{n}"
                for n in names
                if (SRC / Path(*f"{target}.{n}".split(".")[1:])).with_suffix(".py").is_file()
            ]
            targets.update(subs or [target])
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(nxt) :], nxt]))
            if nxt in graph and nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_upward_import_check_fails_on_an_upward_import(tmp_path, monkeypatch):
    """The direction check is not vacuous: a core module that imports a face is reported."""
    fake = tmp_path / "vt_drloc"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "bad.py").write_text("from vt_drloc.faces.callback import DrLocCallback\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", [fake / "core" / "bad.py"])
    with pytest.raises(AssertionError, match=r"vt_drloc.core.bad \(core\) imports vt_drloc.faces.callback \(faces\)"):
        test_imports_go_one_way()


def test_importing_the_core_loads_no_lightning():
    code = (
        "import sys, vt_drloc.core, vt_drloc.models\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({LIGHTNING!r}))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_only_quiet_old_paths_are_imported_inside_the_package():
    """The package imports its modules by their room paths; old flat paths are for users' code and old runs."""
    wrong = [
        f"vt_drloc.{module_name(path)} imports {target} (now {MOVED[target]})"
        for path in MODULES
        if module_name(path) != "old_paths"
        for target, _ in imports(path)
        if target in MOVED and target not in QUIET
    ]
    assert not wrong, "\n".join(wrong)


def test_an_old_module_path_is_the_moved_module_with_one_warning():
    code = (
        "import importlib, json, warnings\n"
        "warnings.simplefilter('always')\n"
        "found = {}\n"
        f"for old, new in {MOVED!r}.items():\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        module = importlib.import_module(old)\n"
        "    same = module is importlib.import_module(new) and module.__spec__.name == new\n"
        "    found[old] = [same, [str(w.message) for w in caught if old + ' moved to' in str(w.message)]]\n"
        "print(json.dumps(found))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.splitlines()[-1])
    for old, new in MOVED.items():
        same, warned = found[old]
        assert same, f"{old} is not the module {new}"
        assert warned == ([] if old in QUIET else [f"{old} moved to {new}; import from there"]), (old, warned)


def test_targets_written_by_runs_before_the_move_still_resolve():
    """Run folders from before vt_drloc 0.2 name their classes by the old paths (.hydra/config.yaml, results.json)."""
    from hydra.utils import get_class

    from vt_drloc.faces.module import DrLocModule
    from vt_drloc.faces.objective import DrLocConfig

    with pytest.warns(DeprecationWarning):
        assert get_class("vt_drloc.module.DrLocModule") is DrLocModule
        assert get_class("vt_drloc.objective.DrLocConfig") is DrLocConfig
