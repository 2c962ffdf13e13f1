"""Re-execute the notebooks in full mode and record what their outputs depend on.

    python scripts/execute_notebooks.py            # every lesson in order, then every solution
    python scripts/execute_notebooks.py notebooks/03_when_is_it_fast.ipynb  # just these
    python scripts/execute_notebooks.py --check    # list the stale ones; exit 1 if any

A notebook's stored outputs depend on its own code cells, the package's code
and the data shipped with it (``osd_lab/``: the zoo's weights, the corpus,
the trained streams). After executing a notebook this script writes a hash of
those into its metadata (``metadata.osd_lab.inputs``); ``tests/test_freshness.py``
fails when a stored hash differs from today's, naming the command above. So
editing a code cell, or the package, without re-executing what shows it
turns CI red. Comment lines, docstrings and markdown are left out of the hash:
they change no output.

Run it on a quiet machine (the notebooks time things): it prints each
notebook's wall time, CPU time and the load average, and its prose's length
and reading time at 200 words a minute: the figures behind the instructor's
guide. Notebooks run with their full settings (``OSD_LAB_FAST``
unset) and the machine's default torch threads.
"""

import argparse
import ast
import hashlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "osd_lab"
KEY = "osd_lab"  # the notebook metadata entry this script owns


def notebooks() -> list[Path]:
    """Every lesson in order, then every solution in order."""
    lessons = sorted((ROOT / "notebooks").glob("*.ipynb"))
    return lessons + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))


def _without_docstrings(source: str) -> str:
    """``source`` without its docstrings, comment lines and blank lines.

    Line-based (the syntax tree only says where each docstring is), so the
    result is the same on every Python version; a comment after code counts.
    """
    dropped = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            dropped.update(range(body[0].lineno, body[0].end_lineno + 1))
    return "\n".join(line.rstrip() for number, line in enumerate(source.splitlines(), start=1)
                     if number not in dropped and line.strip()
                     and not line.lstrip().startswith("#"))


def package_hash() -> str:
    """sha256 over the package's code (without docstrings and comments) and its shipped data, path by path."""
    digest = hashlib.sha256()
    for path in sorted(p for p in PACKAGE.rglob("*") if p.is_file()
                       and "__pycache__" not in p.parts and p.suffix != ".pyc"):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        if path.suffix == ".py":
            digest.update(_without_docstrings(path.read_text()).encode())
        else:
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def inputs_hash(notebook: Path, package: str | None = None) -> str:
    """sha256 of what ``notebook``'s outputs depend on: its code cells and the package.

    package: ``package_hash()``, if already computed (it reads ~45 MB).
    """
    cells = nbformat.read(notebook, as_version=4).cells
    code = "\0".join(cell.source for cell in cells if cell.cell_type == "code")
    digest = hashlib.sha256((package or package_hash()).encode())
    digest.update(code.encode())
    return digest.hexdigest()


def recorded_hash(notebook: Path) -> str | None:
    """The hash stored by the last run of this script on ``notebook`` (None: never)."""
    return nbformat.read(notebook, as_version=4).metadata.get(KEY, {}).get("inputs")


def stale(paths: list[Path]) -> list[Path]:
    """The notebooks among ``paths`` whose stored outputs predate their inputs."""
    package = package_hash()
    return [path for path in paths if recorded_hash(path) != inputs_hash(path, package)]


def prose_words(notebook: Path) -> int:
    """Words in ``notebook``'s markdown cells."""
    cells = nbformat.read(notebook, as_version=4).cells
    return sum(len(cell.source.split()) for cell in cells if cell.cell_type == "markdown")


def execute(notebook: Path, timeout_s: int) -> tuple[float, float]:
    """Execute ``notebook`` in place, full settings; record its inputs' hash.

    Returns (wall seconds, CPU seconds of the kernel and nbconvert).
    """
    env = {k: v for k, v in os.environ.items() if k != "OSD_LAB_FAST"}
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook",
                    "--execute", "--inplace", f"--ExecutePreprocessor.timeout={timeout_s}",
                    str(notebook)], env=env, cwd=ROOT, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    nb = without_widget_state(nbformat.read(notebook, as_version=4))
    nb.metadata[KEY] = {"inputs": inputs_hash(notebook)}
    nbformat.write(nb, notebook)
    return wall, cpu


def without_widget_state(nb):
    """``nb`` without saved widget state (kernel-specific noise, ~100 kB): no
    ``metadata.widgets``, and each widget output keeps only its text form
    (a saved widget view shows "model not found" once the kernel is gone)."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    return nb


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path,
                        help="notebooks to execute (default: all, lessons first)")
    parser.add_argument("--check", action="store_true",
                        help="execute nothing: list the stale notebooks, exit 1 if any")
    parser.add_argument("--timeout", type=int, default=1800,
                        help="seconds one cell may run (default 1800)")
    args = parser.parse_args()
    paths = [p.resolve() for p in args.paths] or notebooks()
    missing = [str(p) for p in paths if p.suffix != ".ipynb" or not p.is_file()]
    if missing:
        parser.error(f"paths must be existing .ipynb files; not found: {', '.join(missing)}")
    if args.check:
        old = stale(paths)
        for path in old:
            print(path.relative_to(ROOT))
        sys.exit(1 if old else 0)
    print("| notebook | wall time | CPU time | load average (1 min) before, after "
          "| prose | reading at 200 words/min |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        load = os.getloadavg()[0]
        wall, cpu = execute(path, args.timeout)
        print(f"| `{path.relative_to(ROOT / 'notebooks')}` | {wall:.0f} s | {cpu:.0f} s | "
              f"{load:.1f}, {os.getloadavg()[0]:.1f} | {prose_words(path)} words | "
              f"{prose_words(path) / 200:.0f} min |", flush=True)


if __name__ == "__main__":
    main()
