"""The rooms of src/vt_drloc and the one direction of their imports, checked on the code itself.

core (pure PyTorch) and models know nothing above them; the Lightning faces build on core; the app
composes everything; report reads files only. See README, "How the code is organised".
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vt_drloc"

# room of each module (dotted name without the "vt_drloc." prefix); the first matching prefix wins
ROOMS = {
    "core": "core",
    "models": "models",
    "files": "base",
    "paths": "base",
    "lightning_api": "adapter",
    "data": "data",
    "callback": "faces",
    "module": "faces",
    "objective": "faces",
    "optim": "faces",
    "lightning": "faces",
    "lightning_private": "faces",  # the one reader of Lightning's / torch's private names (needs no Lightning)
    "report": "report",
    "train": "app",
    "eval": "app",
    "config": "app",
    "checkpoints": "app",
    "results": "app",
    "reliability": "app",
    "progress": "app",
    "run_folder": "app",
    "pos_embed": "app",  # init_from's resampling
    "export": "app",
    "predict": "app",
    "data_info": "data",  # what a checkpoint records of its data (imports data.transforms)
    "__main__": "app",
    "": "package",  # vt_drloc/__init__.py: the public names
    "drloc": "package",  # deprecated import paths, re-exports of core
    "tap": "package",
}
# what each room may import (besides itself)
ALLOWED = {
    "base": set(),
    "core": set(),
    "models": set(),
    "adapter": set(),
    "data": {"base", "adapter"},
    "faces": {"core", "models", "adapter", "data", "base"},
    "app": {"core", "models", "adapter", "data", "base", "faces"},
    "report": {"base"},
    "package": {"core", "models", "adapter", "data", "base", "faces", "app"},
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
            subs = [f"{target}.{n}" for n in names if (SRC / Path(*f"{target}.{n}".split(".")[1:])).with_suffix(".py").is_file()]
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
    (fake / "core" / "bad.py").write_text("from vt_drloc.callback import DrLocCallback\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", [fake / "core" / "bad.py"])
    with pytest.raises(AssertionError, match=r"vt_drloc.core.bad \(core\) imports vt_drloc.callback \(faces\)"):
        test_imports_go_one_way()


def test_importing_the_core_loads_no_lightning():
    code = (
        "import sys, vt_drloc.core, vt_drloc.models\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({LIGHTNING!r}))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
