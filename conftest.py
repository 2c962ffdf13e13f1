"""Settings for every test run, also ``pytest notebooks/...`` alone."""

import os

import pytest

# Notebooks run by nbval read this to pick their quick settings (kernels inherit it).
os.environ.setdefault("OSD_LAB_FAST", "1")
# One thread per kernel: two busy processes with two threads each on a 2-core
# machine slow each other down several-fold.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_report_header(config):
    import torch
    import transformers
    return f"torch {torch.__version__}, transformers {transformers.__version__}"


def _without_stderr(outputs):
    return [out for out in outputs
            if not (out.get("output_type") == "stream" and out.get("name") == "stderr")]


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Checked notebook cells compare what they print, not what libraries warn.

    A dependency's warning (stderr) must not turn a checked cell red: nbval
    compares stdout and results only. Errors still fail the cell.
    """
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval absent (e.g. the lowest-version exactness venv)
        return
    compare = IPyNbCell.compare_outputs
    if getattr(compare, "ignores_stderr", False):
        return

    def compare_outputs(self, test, ref, skip_compare=None):
        return compare(self, _without_stderr(test), _without_stderr(ref), skip_compare)

    compare_outputs.ignores_stderr = True
    IPyNbCell.compare_outputs = compare_outputs
