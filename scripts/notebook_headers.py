"""Every notebook's Colab badge and guarded install cell, made from pyproject.toml.

The repository is named once, in ``[project.urls] Repository``; the install
cell pins the release tag ``v<version>``, so a Colab run gets the code its
notebook was written for, not whatever is on main. It installs nothing off
Colab and keeps Colab's own torch (``torch>=2.4`` is already satisfied there).

    python scripts/notebook_headers.py          # check; exit 1 and list mismatches
    python scripts/notebook_headers.py --write  # rewrite the notebooks' header cells

``tests/test_packaging.py`` runs the check.
"""

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


def project():
    """``(repository URL, release tag)`` from pyproject.toml."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return meta["urls"]["Repository"].rstrip("/"), f"v{meta['version']}"


def badge(notebook: Path) -> str:
    repository, tag = project()
    github = repository.removeprefix("https://github.com/")
    path = notebook.resolve().relative_to(ROOT).as_posix()
    return ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{github}/blob/{tag}/{path})")


def install_cell() -> str:
    repository, tag = project()
    return (
        "# On Colab, install osd_lab first; elsewhere it is already installed (`make setup`).\n"
        f"# The release {tag}, as this notebook was written for; Colab's own torch is kept.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q",\n'
        f'                    "osd_lab @ git+{repository}@{tag}"], check=True)')


def notebooks():
    return sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts)


def header_problems(path: Path, write: bool = False) -> list[str]:
    """What differs from the generated header in notebook ``path`` (fixed if ``write``)."""
    nb = json.loads(path.read_text())
    title, install = nb["cells"][0], nb["cells"][1]
    problems = []
    text = "".join(title["source"])
    if BADGE.search(text) is None:
        problems.append("no Colab badge in the first cell")
    elif BADGE.search(text).group(0) != badge(path):
        problems.append("Colab badge does not match pyproject.toml")
        text = BADGE.sub(lambda _: badge(path), text)
        title["source"] = text.splitlines(keepends=True)
    if install["cell_type"] != "code" or "google.colab" not in "".join(install["source"]):
        problems.append("the second cell is not the guarded install cell")
    elif "".join(install["source"]) != install_cell():
        problems.append("install cell does not match pyproject.toml")
        install["source"] = install_cell().splitlines(keepends=True)
    if write and problems:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite mismatching cells")
    args = parser.parse_args(argv)
    failed = False
    for path in notebooks():
        problems = header_problems(path, args.write)
        left = header_problems(path) if args.write else problems
        for problem in problems:
            fixed = " (fixed)" if problem not in left else ""
            print(f"{path.relative_to(ROOT).as_posix()}: {problem}{fixed}")
        failed |= bool(left)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
