#!/usr/bin/env bash
# Check and time osd_lab on a GPU in one command; see scripts/gpu_check.py.
#   scripts/gpu_check.sh [--device cuda] [--quick] [--out DIR] [--tests PATH ...]
# Made for a machine with torch and transformers but no network (a lent GPU,
# Colab): unless osd_lab already imports from this checkout, it is installed
# from here with no dependencies, no build isolation and no package index
# (or, should pip fail, put on PYTHONPATH, so a short lease is not lost).
# PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
here=$(pwd -P)
installed=$(cd / && "$PYTHON" -c 'import osd_lab, pathlib; print(pathlib.Path(osd_lab.__file__).resolve().parents[1])' 2>/dev/null || true)
if [ "$installed" != "$here" ] &&
   ! "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation --no-index -e .; then
    echo "gpu_check.sh: pip could not install this checkout; importing it from $here" >&2
    export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/gpu_check.py "$@"
