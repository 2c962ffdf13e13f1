"""The front door: ``import osd_lab as osd`` gives the README's module table."""

import re
import subprocess
import sys
from pathlib import Path

import osd_lab as osd

ROOT = Path(__file__).resolve().parents[1]
# Backticked in the table but not top-level names: a variable, exceptions, a
# transformers method, a method of a class, and cache.forward (too generic).
NOT_API = {"OSD_LAB_DEVICE", "ValueError", "TypeError", "crop", "serve_batch", "forward",
           "save_draft"}


def readme_table_names():
    """Names in backticks in the 'what' column of the README's module table."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| module | what |"):].split("\n\n")[0]
    names = set()
    for row in table.splitlines()[2:]:
        what = row.split("|")[2]
        names |= set(re.findall(r"`([A-Za-z_]\w*)[`(]", what))
    return names


def test_every_name_in_the_readme_table_is_public():
    names = readme_table_names()
    assert len(names) > 40
    assert sorted(names - NOT_API - set(osd.__all__)) == []
    assert sorted(set(osd.__all__) - names) == []


def test_every_public_name_resolves_and_is_the_function_not_its_module():
    for name in osd.__all__:
        assert getattr(osd, name) is not None, name
    assert callable(osd.verify) and callable(osd.distill)
    assert osd.speculative_generate.__module__ == "osd_lab.decoding"


def test_import_needs_neither_matplotlib_nor_ipywidgets():
    code = ("import sys, osd_lab; "
            "print(sorted(m for m in ('matplotlib', 'ipywidgets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
