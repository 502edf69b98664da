"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else None]
    blocks = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    assert blocks, f"no python block in README section {title!r}"
    return "\n".join(blocks)


def test_callback_section_example_trains_with_drloc(capsys):
    namespace: dict = {}
    exec(compile(section_code("Add DRLoc to your Lightning project"), "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.global_step == 4
    assert trainer.callback_metrics["train/drloc"].item() > 0
    module = trainer.lightning_module
    assert not hasattr(module, "_drloc_loss")  # the callback leaves the module as it was
    assert "tensor(" in capsys.readouterr().out


def test_paper_vs_released_table_is_the_one_in_docs_fidelity():
    """The README's "Paper text vs released code" table agrees with docs/fidelity.md row for row."""
    text = README.read_text()
    section = text[text.index("### Paper text vs released code") : text.index("## Add DRLoc to your Lightning project")]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    fidelity = (README.parent / "docs" / "fidelity.md").read_text()
    glance = fidelity[fidelity.index("## Options at a glance") : fidelity.index("## Every difference")]
    assert len(rows) >= 12 and rows == [line for line in glance.splitlines() if line.startswith("|")]
    for option in ("tap_norm", "head_init", "class_head", "lambda_decay_epochs", "interval", "pool_target"):
        assert f"| `{option}`" in section, option


def test_every_test_the_docs_cite_exists():
    """``tests/<file>.py::<name>`` in the README and docs/*.md names a test that exists."""
    root = README.parent
    cited = set()
    for doc in [README, *sorted((root / "docs").glob("*.md"))]:
        cited |= set(re.findall(r"tests/(test_\w+\.py)::(test_\w+)", doc.read_text()))
    assert len(cited) >= 15
    missing = [
        f"{f}::{t}"
        for f, t in sorted(cited)
        if not re.search(rf"^def {t}\(", (root / "tests" / f).read_text(), flags=re.M)
    ]
    assert not missing, missing


def test_code_organisation_section_is_short():
    """README's "How the code is organised" shows the rooms in at most 15 lines (the map itself is
    checked against the code by tests/test_architecture.py)."""
    text = README.read_text()
    section = text[text.index("## How the code is organised") :]
    section = section[: section.index("\n## ", 5)]
    assert len(section.strip().splitlines()) <= 15
