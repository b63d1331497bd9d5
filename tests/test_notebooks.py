"""The notebooks themselves run under nbval (see pyproject); here: they read as a course, stored with their outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parent.parent / "notebooks"
LESSONS = sorted(FOLDER.glob("*.ipynb"))
SOLUTIONS = sorted((FOLDER / "solutions").glob("*.ipynb"))
EVERY = LESSONS + SOLUTIONS
WIDGETS = ("ExecutionForm", "VerificationDashboard", "ReproducibilityPanel", "ReplayExplorer", "AttestationInspector",
           "OverridePanel")
SEQUENCE = ["01_the_model", "02_run_executions", "03_overrides", "04_bulk_verify_archives", "05_reproducibility_audit",
            "06_replay_detection", "07_transparency_proofs", "08_scale_out"]


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def is_check(cell: dict) -> bool:
    return "check" in cell.get("metadata", {}).get("tags", [])


def test_the_lessons_run_in_order_from_the_model_to_scale_out_and_each_has_its_solutions():
    assert [p.stem for p in LESSONS] == SEQUENCE
    assert [p.stem for p in SOLUTIONS] == SEQUENCE


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_a_lesson_opens_with_what_you_will_learn_and_its_place_in_the_flow(path):
    first, setup = cells(path)[:2]
    assert first["cell_type"] == "markdown" and source(first).startswith(f"# {path.name[:2]} · ")
    assert "**What you will learn**" in source(first)
    assert "pl.flow_diagram(" in source(setup)
    svg = [o for o in setup["outputs"] if "image/svg+xml" in o.get("data", {})]
    assert svg and "<svg" in "".join(svg[0]["data"]["image/svg+xml"])  # the picture is stored, for a preview


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_a_lesson_ends_with_exercises_that_have_worked_solutions(path):
    text = "\n".join(source(c) for c in cells(path) if c["cell_type"] == "markdown")
    assert "## Exercises" in text and "**Exercise 1.**" in text
    assert f"solutions/{path.name}" in text and (FOLDER / "solutions" / path.name).is_file()
    solution = "\n".join(source(c) for c in cells(FOLDER / "solutions" / path.name))
    asked = len(re.findall(r"\*\*Exercise \d+\.\*\*", text))
    assert all(f"## Exercise {n}" in solution for n in range(1, asked + 1))


@pytest.mark.parametrize("path", EVERY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_checks_live_in_tagged_collapsed_cells_not_in_the_lesson(path):
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    lesson, checks = [c for c in code if not is_check(c)], [c for c in code if is_check(c)]
    assert checks, "no check cell: nothing keeps this notebook honest"
    assert not [source(c) for c in lesson if re.search(r"^\s*assert\b", source(c), re.M)], "an assert in a lesson cell"
    assert all(c["metadata"].get("jupyter", {}).get("source_hidden") for c in checks)


@pytest.mark.parametrize("path", EVERY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stored_with_the_outputs_of_one_clean_run(path):
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), "not one top-to-bottom run: make notebooks"
    assert not [c for c in code if any(o["output_type"] == "error" for o in c["outputs"])]
    assert all("application/vnd.jupyter.widget-view+json" not in o.get("data", {}) for c in code for o in c["outputs"])


@pytest.mark.parametrize("path", EVERY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_portable_and_self_cleaning(path):
    text = "\n".join(source(c) for c in cells(path) if c["cell_type"] == "code")
    assert not re.search(r"['\"](/|~/|[A-Za-z]:\\)", text), "absolute path in a notebook"
    assert re.search(r'pl\.Classroom\("' + path.name[:2], text)  # a fresh workspace, fixed clock, ids and keys
    assert "room.close()" in source(cells(path)[-1])  # and removed at the end


def test_every_panel_appears_in_some_lesson():
    text = "\n".join(source(c) for p in LESSONS for c in cells(p))
    assert [w for w in WIDGETS if w not in text] == []


@pytest.mark.parametrize("path", EVERY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_outputs_compared_by_nbval_hold_nothing_that_differs_between_machines(path):
    compared = [c for c in cells(path) if "nbval-check-output" in c.get("metadata", {}).get("tags", [])]
    text = json.dumps([c["outputs"] for c in compared])
    assert "parmana-lesson-" not in text and "/tmp" not in text  # a path: another temp folder elsewhere
    assert not re.search(r"0x[0-9a-f]{8,}", text)  # an object's address
