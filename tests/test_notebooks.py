"""The notebooks themselves run under nbval (see pyproject); here: they stay clean and portable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
WIDGETS = ("ExecutionForm", "VerificationDashboard", "ReproducibilityPanel", "ReplayExplorer", "AttestationInspector",
           "OverridePanel")


def test_the_six_notebooks_are_there():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_", "06_"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_clean_and_portable(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("outputs") == [] and c.get("execution_count") is None for c in code), "stored with outputs"
    source = "\n".join("".join(c["source"]) for c in code)
    assert not re.search(r"['\"](/|~/|[A-Za-z]:\\)", source), "absolute path in a notebook"
    assert "tempfile.mkdtemp" in source and "shutil.rmtree(workspace)" in source  # a fresh workspace, removed at the end
    assert any(name in source for name in WIDGETS)
