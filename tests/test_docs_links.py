"""What the README and docs/ point at exists: relative links and their #anchors resolve, and every
``make <target>`` they tell a reader to type is a target that runs the documented commands (checked with
``make -n``, which prints a recipe without running it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(path: Path) -> str:
    """The Markdown text outside fenced code blocks."""
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.S)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.*?)\s*$", prose(path), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def relative_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(prose(path)) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_the_docs_link_to_each_other():
    assert sum(len(relative_links(doc)) for doc in DOCS) >= 20


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_anchors_resolve(doc):
    broken = []
    for target in relative_links(doc):
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


def dry_run(target: str) -> str:
    """``make -n <target>``: the commands the target would run, none of them run."""
    done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"make -n {target} fails: {done.stderr.strip()}"
    return done.stdout


# what each documented target must run (besides `make install`, which each depends on)
RUNS = {
    "train": ["-m vt_drloc.train -m experiment=quickstart"],
    "test": ["ruff check", "mypy", "-m pytest -q tests", "pip install -q --no-deps --target"],
    "bench": ["bench/overhead.py"],
}


def test_every_make_command_the_readme_gives_runs_what_it_says():
    commands = set(re.findall(r"\bmake ([a-z][\w-]*)", (ROOT / "README.md").read_text()))
    assert {"train", "test"} <= commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, flags=re.M), ".ci/run must run make test"
    for target in sorted(commands):
        recipe = dry_run(target)
        assert "pip install -q -e" in recipe, f"make {target} does not install first"
        missing = [command for command in RUNS.get(target, []) if command not in recipe]
        assert not missing, f"make {target} no longer runs {missing}:\n{recipe}"
