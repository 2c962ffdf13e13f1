"""Stored notebook outputs are fresh: each ran on the code cells and package it shows.

``scripts/execute_notebooks.py`` records, in each notebook's metadata, a hash
of its code cells, the package's code and the shipped data when it executes
the notebook. A notebook whose inputs changed since is stale: its stored
figures may contradict a re-run.
"""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("execute_notebooks",
                                              ROOT / "scripts/execute_notebooks.py")
execute_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(execute_notebooks)


def test_every_notebook_ran_on_the_code_it_shows():
    stale = [str(p.relative_to(ROOT)) for p in execute_notebooks.stale(execute_notebooks.notebooks())]
    assert not stale, ("stored outputs older than the code they show; on a quiet machine run\n"
                       "    .venv/bin/python scripts/execute_notebooks.py " + " ".join(stale))


def test_the_hash_ignores_comment_lines_and_docstrings_not_code():
    strip = execute_notebooks._without_docstrings
    plain = "def f(x):\n    return x + 1\n"
    assert strip(plain) == strip('def f(x):\n    """Adds one."""\n\n    # one\n    return x + 1\n')
    assert strip(plain) != strip("def f(x):\n    return x + 2\n")
