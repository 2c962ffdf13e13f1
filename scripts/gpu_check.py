"""Check and time the package on one device in one command, and write one report.

    scripts/gpu_check.sh [--device cuda] [--quick] [--out DIR] [--tests PATH ...]

Made for a GPU lent for a few minutes (or a Colab GPU), so every stage runs
in its own process under a time limit: its share of one budget (--budget,
default 480 s, 170 s with --quick), and never more than is left of it. A
stage that hangs costs itself, not the rest. The stages:

1. the environment: Python, torch, transformers, the GPU's name and memory;
2. the device-parametrised tests (``pytest -m device``; ``-m "device and
   exactness"`` with --quick) on ``--device`` alone (``OSD_LAB_TEST_DEVICE``),
   without the nbval options of pyproject.toml, which need packages the lent
   machine lacks;
3. ``benchmarks/speed.py`` on the zoo (float32) and on a layered pair of
   real shapes (a Qwen2.5-1.5B-shaped target drafted for by its own first
   layers, calibrated to alpha 0.6 / 0.8 / 0.95; bfloat16 on CUDA; a
   four-layer pair of the same architecture elsewhere, so a CPU dry run
   stays short), then ``benchmarks/batched.py`` and ``benchmarks/streaming.py``
   where they exist (not with --quick).

The report, ``gpu_check.md``, goes to --out (default: ``$OUT``, else
``outputs/gpu_check``) with ``pytest.log`` and ``pytest.xml``; it is rewritten
after every stage, so a run stopped early still leaves one. The exit status
is 1 when a stage failed. ``--device cpu --quick`` is the dry run that
``tests/test_gpu_check.py`` runs on every CI build.
"""

import argparse
import datetime
import importlib.util
import os
import platform
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
DEVICES = ("cuda", "mps", "cpu")


def check_device(device: str) -> None:
    """Stop with a clear message unless ``device`` exists here."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}
    if device not in available:
        raise SystemExit(f"--device must be one of {DEVICES}, got {device!r}")
    if not available[device]:
        raise SystemExit(f"--device {device}: torch sees no such device here")


def environment(device: str) -> list[str]:
    """Markdown lines naming the machine and the library versions."""
    lines = [f"- Python {platform.python_version()}, torch {torch.__version__} "
             f"(CUDA build {torch.version.cuda}), transformers {transformers.__version__}",
             f"- {os.cpu_count()} CPU cores, {platform.machine()}, {platform.platform()}"]
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.append(f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute "
                     f"capability {props.major}.{props.minor}, "
                     f"{props.multi_processor_count} multiprocessors")
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=20)
            lines.append(f"- nvidia-smi: {smi.stdout.strip()}")
        except (OSError, subprocess.TimeoutExpired) as err:
            lines.append(f"- nvidia-smi: not run ({err})")
    elif device == "mps":
        lines.append("- GPU: Apple MPS")
    return lines


# -----------------------------------------------------------------------------
# stages

def run_stage(name, command, limit_s, env=None):
    """Run ``command`` in ROOT with a time limit; returns a dict for the report."""
    start = time.perf_counter()
    print(f"[{name}] {shlex.join(command)} (limit {limit_s:.0f} s)", flush=True)
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=limit_s, env={**os.environ, **(env or {})})
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        stdout, stderr = done.stdout, done.stderr
    except subprocess.TimeoutExpired as err:
        status = f"stopped at its limit of {limit_s:.0f} s"
        stdout, stderr = (b.decode() if isinstance(b, bytes) else (b or "")
                          for b in (err.stdout, err.stderr))
    seconds = time.perf_counter() - start
    print(f"[{name}] {status}, {seconds:.0f} s", flush=True)
    return dict(name=name, command=shlex.join(command), status=status, seconds=seconds,
                stdout=stdout, stderr=stderr)


def test_summary(xml_path: Path) -> str:
    """Counts and failures from pytest's junit XML."""
    if not xml_path.exists():
        return "no junit XML was written"
    suite = ElementTree.parse(xml_path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    seconds = float(suite.get("time", 0))
    lines = [f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, "
             f"{counts['skipped']} skipped (pytest's own time {seconds:.0f} s)"]
    for case in suite.iter("testcase"):
        for problem in (*case.findall("failure"), *case.findall("error")):
            message = (problem.get("message") or "").splitlines()[:3]
            lines.append(f"- FAILED {case.get('classname')}::{case.get('name')}: "
                         f"{' / '.join(message)[:400]}")
    return "\n".join(lines)


def plan(args, out: Path):
    """The stages to run: (name, command, largest share of the budget, extra environment)."""
    python, device = sys.executable, args.device
    marker = "device and exactness" if args.quick else "device"
    pytest = [python, "-m", "pytest", *args.tests, "-m", marker, "-o", "addopts=",
              "-p", "no:cacheprovider", "-q", "-rfE", "--durations=10",
              f"--junitxml={out / 'pytest.xml'}"]
    if device != "cpu" and importlib.util.find_spec("xdist"):
        pytest += ["-n", "4"]  # the tests are launch-bound: four processes share the GPU
    half = "bfloat16" if device == "cuda" else "float32"
    # a 1.5B-shaped target drafted for by its own first layers, at alpha 0.6 / 0.8 / 0.95
    real_pair = "layered-qwen2.5" if device == "cuda" else "layered-qwen2-tiny"
    zoo_size = ["--prompts", "2", "--tokens", "16"] if args.quick else []
    real_size = ["--prompts", "2", "--tokens", "16"] if args.quick else ["--prompts", "10"]
    speed = [python, "benchmarks/speed.py", "--device", device]
    stages = [
        ("tests", pytest, 0.55, {"OSD_LAB_TEST_DEVICE": device}),
        ("speed, zoo, float32", speed + ["--dtype", "float32", *zoo_size], 0.25, None),
        (f"speed, {real_pair}, {half}",
         speed + ["--pair", real_pair, "--dtype", half, *real_size], 0.4, None),
    ]
    for script in ("batched", "streaming"):
        if (ROOT / "benchmarks" / f"{script}.py").exists() and not args.quick:
            stages.append((f"{script}, zoo, float32", [python, f"benchmarks/{script}.py",
                           "--device", device, "--dtype", "float32"], 0.2, None))
    return stages


# -----------------------------------------------------------------------------
# the report

def fenced(text: str, last_lines: int = 60) -> str:
    lines = [line for line in text.splitlines() if line.strip()][-last_lines:]
    return "```text\n" + "\n".join(lines) + "\n```"


def write_report(path: Path, header: list[str], results: list[dict], out: Path) -> None:
    rows = [f"| {r['name']} | {r['status']} | {r['seconds']:.0f} |" for r in results]
    parts = [*header, "", "| stage | result | seconds |", "|---|---|---:|", *rows]
    for r in results:
        parts += ["", f"## {r['name']}", "", f"`{r['command']}`", ""]
        if r["name"] == "tests":
            parts += [test_summary(out / "pytest.xml"), "", fenced(r["stdout"], 40)]
        else:
            parts.append(fenced(r["stdout"]))
        if r["status"] != "ok":
            parts += ["", "stderr (end):", "", fenced(r["stderr"], 25)]
    path.write_text("\n".join(parts) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help=f"one of {DEVICES} (default: cuda)")
    parser.add_argument("--quick", action="store_true",
                        help="exactness tests and short benchmarks only (budget 170 s)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or
                                                         ROOT / "outputs" / "gpu_check"))
    parser.add_argument("--tests", nargs="+", default=["tests"],
                        help="test files or folders to run (default: tests)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all stages (default: 480, or 170 with --quick)")
    args = parser.parse_args(argv)
    check_device(args.device)
    budget = args.budget or (170 if args.quick else 480)
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / "gpu_check.md"
    started = time.perf_counter()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [f"# osd_lab device check: {args.device}{' (quick)' if args.quick else ''}", "",
              f"- {now}; `{shlex.join(['scripts/gpu_check.sh', *(argv or sys.argv[1:])])}`",
              *environment(args.device)]
    results = []
    for name, command, share, env in plan(args, args.out):
        left = budget - (time.perf_counter() - started)
        if left < 15:
            results.append(dict(name=name, command=shlex.join(command), seconds=0.0,
                                status=f"not run: {left:.0f} s of the budget left",
                                stdout="", stderr=""))
            continue
        results.append(run_stage(name, command, min(share * budget, left), env))
        if name == "tests":
            (args.out / "pytest.log").write_text(results[-1]["stdout"] + results[-1]["stderr"])
        write_report(report, header, results, args.out)
    write_report(report, header, results, args.out)
    total = time.perf_counter() - started
    print(f"\nreport: {report} ({total:.0f} s in all)")
    print(report.read_text().split("\n## ")[0])
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
