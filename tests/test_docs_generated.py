"""docs/reliability.md's tables are what the tests' ``fault`` markers say (docs/gen_reliability.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "gen_reliability.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_reliability", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_reliability_page_is_regenerated_from_the_markers():
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    page = (REPO / "docs" / "reliability.md").read_text()
    # every test named in the tables exists in the file it names
    for line in page.split(load_generator().BEGIN, 1)[1].splitlines():
        if line.startswith("| ") and "::" in line:
            test = line.rsplit("`", 2)[-2]
            path, name = test.split("::")
            assert f"def {name.split('[')[0]}(" in (REPO / "tests" / path).read_text(), test


def test_rows_per_case_stacked_in_order_and_stale_pages_are_found(tmp_path):
    gen = load_generator()
    (tmp_path / "test_fake.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.fault("first claim", "first outcome")
            @pytest.mark.fault("second claim", "second outcome")
            def test_two_rows():
                pass

            @pytest.mark.parametrize("value", ["-1", "abc"])
            @pytest.mark.fault("`x={value}`", "refused", kind="bad input")
            def test_one_row_per_case(value):
                pass

            @pytest.mark.parametrize("value", [1, 2])
            @pytest.mark.fault("a claim without fields", "one row", kind="defect")
            def test_one_row(value):
                pass
            """
        )
    )
    rows = gen.collect(tmp_path)
    assert [(r.kind, r.what) for r in rows] == [
        ("fault", "first claim"),
        ("fault", "second claim"),
        ("bad input", "`x=-1`"),
        ("bad input", "`x=abc`"),
        ("defect", "a claim without fields"),
    ]
    assert rows[2].test == "test_fake.py::test_one_row_per_case[-1]" and rows[4].test == "test_fake.py::test_one_row"
    page = "# Title\n\nprose\n"
    first = gen.regenerate(page, rows)
    assert first.startswith(page) and "| 2 | `x=abc` | refused | `test_fake.py::test_one_row_per_case[abc]` |" in first
    assert gen.regenerate(first, rows) == first  # idempotent: only the generated part is replaced
    assert gen.regenerate(first, rows[:1]) != first
    assert "Rows: 5 (2 faults, 2 bad inputs, 1 defects found and fixed)" in first


def test_a_marker_with_an_unknown_kind_stops_the_generator(tmp_path):
    gen = load_generator()
    (tmp_path / "test_bad.py").write_text(
        'import pytest\n\n@pytest.mark.fault("a", "b", kind="rumour")\ndef test_x():\n    pass\n'
    )
    with pytest.raises(SystemExit, match="kind='rumour' is not one of"):
        gen.collect(tmp_path)
