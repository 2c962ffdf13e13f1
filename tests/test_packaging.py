"""Packaging: environment.yml matches pyproject.toml, CI runs the README command, clean notebooks."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_environment_matches_pyproject():
    """The same packages with the same version ranges (a conda user tests nothing else)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {r.replace(" ", "") for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {r.replace(" ", "") for r in extra}
    lines = (ROOT / "environment.yml").read_text().splitlines()
    pip_section = lines[lines.index("  - pip:") + 1:]
    listed = {line.strip()[2:].replace(" ", "") for line in pip_section
              if line.strip().startswith("- ")}
    assert listed == wanted


def test_ci_runs_the_readme_test_command_and_the_lowest_transformers():
    assert "make test" in (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text().split()
    assert "test" in ci and "test-min" in ci


def test_notebooks_store_no_widget_state():
    """Saved widget state is kernel-specific noise: the notebooks show results by display()."""
    import json
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert "widgets" not in json.loads(path.read_text())["metadata"], path.name


def test_colab_headers_come_from_pyproject_and_pin_a_release():
    import importlib.util
    spec = importlib.util.spec_from_file_location("notebook_headers",
                                                  ROOT / "scripts/notebook_headers.py")
    headers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(headers)
    repository, tag = headers.project()
    assert repository.startswith("https://github.com/") and tag.startswith("v")
    assert f"git+{repository}@{tag}" in headers.install_cell()  # a release, not main
    for path in headers.notebooks():
        assert headers.header_problems(path) == [], path.name
