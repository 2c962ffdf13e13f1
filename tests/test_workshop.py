"""The workshop kit: solution notebooks mirror the lessons; the instructor's guide names them."""

import json
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOLUTIONS = sorted((NOTEBOOKS / "solutions").glob("*.ipynb"))


def test_every_solution_answers_a_lesson_named_in_the_guide():
    guide = (NOTEBOOKS / "README.md").read_text()
    assert SOLUTIONS
    for path in SOLUTIONS:
        lesson = NOTEBOOKS / path.name
        assert lesson.exists(), f"{path.name}: no lesson notebook of that name"
        assert "## Exercises" in "".join(
            "".join(cell["source"]) for cell in json.loads(lesson.read_text())["cells"])
        assert f"`{path.stem}`" in guide, f"the guide does not name {path.stem}"


def test_solutions_store_no_widget_state():
    for path in SOLUTIONS:
        assert "widgets" not in json.loads(path.read_text())["metadata"], path.name
