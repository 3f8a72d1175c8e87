#!/usr/bin/env bash
# Creates .venv and installs ofexp with its pinned dependencies (CPU or CUDA
# torch 2.14.1 on x86_64). Safe to run again: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# pip warns about every absent local index it is configured with; keep only the rest.
quiet() { { "$@" 2>&1; } | { grep -v "^WARNING: Location 'file:" || true; }; }
quiet .venv/bin/python -m pip install -q -e ".[test]"
echo "ofexp installed in .venv ($(.venv/bin/python -c 'import ofexp; print(ofexp.__version__)'))" >&2
