"""pyproject.toml's warning filters: a deprecation raised from vt_drloc's own modules fails the test run (no blanket
ignore hides it, none turns it off), while pytest.warns still records the deliberate deprecation shims."""

from __future__ import annotations

import warnings

import pytest


def warn_from(module: str, category: type[Warning]) -> None:
    """Raise a warning that Python attributes to ``module`` (as if that module's code had called warnings.warn)."""
    code = compile("import warnings\nwarnings.warn('an old API', category)", "<warning>", "exec")
    exec(code, {"__name__": module, "category": category})


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_deprecation_from_vt_drloc_is_an_error(category):
    with pytest.raises(category, match="an old API"):
        warn_from("vt_drloc.base.files", category)


def test_pytest_warns_still_records_our_deliberate_deprecations():
    with pytest.warns(DeprecationWarning, match="an old API"):
        warn_from("vt_drloc.drloc", DeprecationWarning)


def test_a_third_party_deprecation_is_shown_not_raised():
    with warnings.catch_warnings(record=True) as seen:
        warn_from("some_library.module", DeprecationWarning)
    assert [str(w.message) for w in seen] == ["an old API"]
