"""Habits of the project: one version source, a changelog that names it."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import tomllib

import vt_drloc

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_has_one_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]  # read from vt_drloc.__version__
    assert importlib.metadata.version("vt_drloc") == vt_drloc.__version__


def test_the_changelog_has_the_current_version_or_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert versions and versions[0] == "Unreleased" or versions[0] == vt_drloc.__version__
    assert vt_drloc.__version__ in versions
