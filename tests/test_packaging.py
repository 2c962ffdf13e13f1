"""Packaging: environment.yml matches pyproject.toml, CI runs the README command, clean notebooks."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {name(r) for r in extra}
    lines = (ROOT / "environment.yml").read_text().splitlines()
    pip_section = lines[lines.index("  - pip:") + 1:]
    listed = {name(line.strip()[2:]) for line in pip_section if line.strip().startswith("- ")}
    assert listed == wanted


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_notebooks_store_no_widget_state():
    """Saved widget state is kernel-specific noise: the notebooks show results by display()."""
    import json
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert "widgets" not in json.loads(path.read_text())["metadata"], path.name
