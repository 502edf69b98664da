"""The ``>>>`` examples in the public docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "name", ["vt_drloc", "vt_drloc.drloc", "vt_drloc.module", "vt_drloc.tap", "vt_drloc.pos_embed", "vt_drloc.checkpoints"]
)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if name != "vt_drloc.tap":
        assert result.attempted > 0
