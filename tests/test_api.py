"""The front door: a small ``import osd_lab as osd``, and a README module table
that says where every other name lives."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import osd_lab as osd

ROOT = Path(__file__).resolve().parents[1]
# Backticked in the table but not names of its modules: a variable, exceptions,
# a transformers method and methods of classes.
NOT_API = {"OSD_LAB_DEVICE", "ValueError", "TypeError", "crop", "serve_batch", "save_draft",
           "next_block", "observe"}
MOST_TOP_LEVEL = 35  # what a learner calls; the rest stays in its module


def readme_table():
    """``{module: names}``: the names in backticks in the 'what' column of the
    README's module table, by the row's modules (``sampling.py`` -> ``sampling``)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| module | what |"):].split("\n\n")[0]
    rows = {}
    for row in table.splitlines()[2:]:
        _, modules, what = row.split("|")[:3]
        names = set(re.findall(r"`([A-Za-z_]\w*)[`(]", what)) - NOT_API
        for module in re.findall(r"`(\w+)\.py`", modules):
            rows[module] = names
    return rows


def test_every_name_in_the_readme_table_lives_in_its_module():
    rows = readme_table()
    assert len(rows) >= 20
    for module, names in rows.items():
        imported = importlib.import_module(f"osd_lab.{module}")
        # a row with two modules (plots.py, dashboard.py) names things of either
        siblings = [m for m, n in rows.items() if n is names]
        for name in names:
            assert any(hasattr(importlib.import_module(f"osd_lab.{m}"), name)
                       for m in siblings), f"{name} is not in osd_lab.{module}"
        assert imported.__doc__, f"osd_lab.{module} has no docstring"


def test_the_top_level_is_small_and_in_the_table():
    assert len(osd.__all__) <= MOST_TOP_LEVEL
    tabled = set().union(*readme_table().values())
    assert sorted(set(osd.__all__) - tabled) == []


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
