"""Settings for every test run, also ``pytest notebooks/...`` alone."""

import os

# Notebooks run by nbval read this to pick their quick settings (kernels inherit it).
os.environ.setdefault("OSD_LAB_FAST", "1")
# One thread per kernel: two busy processes with two threads each on a 2-core
# machine slow each other down several-fold.
os.environ.setdefault("OMP_NUM_THREADS", "1")
