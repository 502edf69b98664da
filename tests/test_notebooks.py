"""The notebooks of notebooks/: stored without outputs, and each runs end to end on tiny settings.

``execute_notebook`` is generic: it injects a cell of parameter assignments right after the cell
tagged ``parameters`` (papermill's convention, without papermill), runs every cell with nbclient
in a fresh kernel started in the notebook's folder, and fails on the first cell that raises.
Add a notebook with one line in ``NOTEBOOKS``: its file name and a function of the test fixtures
returning its tiny parameters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"


def execute_notebook(
    path: Path, parameters: Mapping[str, Any] | None = None, timeout: int = 600, env: Mapping[str, str] | None = None
):
    """Run the notebook at ``path`` with ``parameters`` injected; returns the executed notebook.

    Parameter values are written as Python literals (``repr``), so pass str / numbers / bool /
    None / lists / dicts (a ``Path`` is passed as its string). The notebook file is not modified."""
    book = nbformat.read(path, as_version=4)
    if parameters:
        lines = ["# Injected by tests/test_notebooks.py"]
        lines += [
            f"{name} = {str(value)!r}" if isinstance(value, Path) else f"{name} = {value!r}"
            for name, value in parameters.items()
        ]
        injected = nbformat.v4.new_code_cell("\n".join(lines))
        injected.metadata["tags"] = ["injected-parameters"]
        tagged = [i for i, cell in enumerate(book.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
        book.cells.insert(tagged[0] + 1 if tagged else 0, injected)
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})  # the kernel inherits the environment of this process
    try:
        client = nbclient.NotebookClient(
            book,
            timeout=timeout,
            kernel_name="python3",
            allow_errors=False,
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return book


class Fixtures(NamedTuple):
    tmp_path: Path
    request: pytest.FixtureRequest

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)


class Notebook(NamedTuple):
    name: str
    parameters: Callable[[Fixtures], dict[str, Any]] = lambda fx: {}
    # optional extra checks of the executed notebook: check(book, fixtures)
    check: Callable[[Any, Fixtures], None] | None = None


def images(book) -> list[dict]:
    return [o for c in book.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]


def quickstart_parameters(fx: Fixtures) -> dict[str, Any]:
    fx.fixture("cifar10_tar")  # fails with a clear message when the archive is missing
    return {
        "SAMPLES_PER_CLASS": 4,
        "MAX_EPOCHS": 1,
        "DEPTH": 1,
        "EMBED_DIM": 32,
        "NUM_HEADS": 2,
        "SAMPLE_SIZE": 8,
        "BATCH_SIZE": 8,
        "LIMIT_TRAIN_BATCHES": 2,
        "LIMIT_EVAL_BATCHES": 1,
        "DATA_ROOT": fx.fixture("data_root"),
    }


def sweep_results_parameters(fx: Fixtures) -> dict[str, Any]:
    from test_sweep import example_sweep

    sweep_dir, _ = example_sweep(fx.tmp_path / "sweep")
    return {"SWEEP_DIR": sweep_dir, "WRITE_FILES": True}


def quickstart_check(book, fx: Fixtures) -> None:
    assert len(images(book)) == 1  # the plot of the run


def sweep_results_check(book, fx: Fixtures) -> None:
    assert all(
        (fx.tmp_path / "sweep" / f).is_file() for f in ("summary.csv", "summary.md", "summary.png", "curves.png")
    )
    assert len(images(book)) == 3  # summary, curves, per-seed differences


NOTEBOOKS = [
    Notebook("quickstart.ipynb", quickstart_parameters, quickstart_check),
    Notebook("sweep_results.ipynb", sweep_results_parameters, sweep_results_check),
]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda nb: nb.name)
def test_notebook_is_stored_without_outputs(notebook):
    book = nbformat.read(NOTEBOOK_DIR / notebook.name, as_version=4)
    nbformat.validate(book)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{notebook.name}: clear the outputs before committing"
            )


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda nb: nb.name)
def test_notebook_runs_end_to_end(notebook, tmp_path, request):
    fixtures = Fixtures(tmp_path, request)
    env = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    book = execute_notebook(NOTEBOOK_DIR / notebook.name, notebook.parameters(fixtures), env=env)
    assert not [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    if notebook.check is not None:
        notebook.check(book, fixtures)
