"""The ``>>>`` examples in the public docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "name",
    [
        "vt_drloc",
        "vt_drloc.core.loss",
        "vt_drloc.core.head",
        "vt_drloc.core.sampling",
        "vt_drloc.core.schedule",
        "vt_drloc.core.stages",
        "vt_drloc.faces.module",
        "vt_drloc.core.tap",
        "vt_drloc.app.pos_embed",
        "vt_drloc.app.checkpoints",
        "vt_drloc.report.markdown",
    ],
)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if name != "vt_drloc.core.tap":
        assert result.attempted > 0
