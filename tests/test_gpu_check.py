"""scripts/gpu_check.sh end to end on the CPU: the dry run of the check made for a lent GPU."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_on_cpu_writes_the_report(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable,  # this checkout: nothing to install
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--quick",
               "--tests", "tests/test_verify.py::test_greedy_is_the_temperature_zero_case",
               "--out", str(tmp_path), "--budget", "900"]  # generous: CPUs here are shared
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "gpu_check.md").read_text()
    for expected in ("# osd_lab device check: cpu (quick)", "torch ", "transformers ",
                     "| tests | ok |", "1 passed, 0 failed, 0 errors",
                     "| speed, zoo, float32 | ok |", "| speed, layered-qwen2-tiny, float32 | ok |",
                     "| autoregressive (ours) |", "Cost model with the measured c",
                     "all greedy outputs agree token for token"):
        assert expected in report, expected
    assert {p.name for p in tmp_path.iterdir()} == {"gpu_check.md", "pytest.log", "pytest.xml"}


def test_missing_device_is_refused():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    with pytest.raises(SystemExit, match="--device must be one of"):
        gpu_check.main(["--device", "tpu"])
    if not gpu_check.torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: torch sees no such device"):
            gpu_check.main(["--device", "cuda"])
