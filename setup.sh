#!/usr/bin/env bash
# Creates .venv and installs ofexp with its pinned dependencies (CPU or CUDA
# torch 2.14.1 on x86_64). Safe to run again: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
say() { echo "setup: $*" >&2; }
if [ ! -x .venv/bin/python ]; then
  say "creating the virtual environment .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
if .venv/bin/python -c 'import ofexp, torch, mlflow, ot' 2>/dev/null; then
  say "ofexp is installed in .venv; checking that every pinned dependency is there"
else
  say "installing ofexp and its pinned dependencies into .venv: torch 2.14.1 and torchvision 0.29.1"
  say "(from PyPI; on x86_64 Linux they bring their CUDA libraries), MLflow, POT, pandas, scipy,"
  say "click, tqdm, and pytest and selenium for the tests. A first install downloads about 3 GB,"
  say "takes about 6.5 GB on disk and 5-10 minutes; pip's progress follows."
fi
# pip warns about every absent local index it is configured with, and lists every package
# already there on a rerun; keep the rest (what it downloads and installs).
filter() { { "$@" 2>&1; } | { grep -v -e "^WARNING: Location 'file:" -e "^Requirement already satisfied" || true; }; }
filter .venv/bin/python -m pip install --progress-bar on -e ".[test]"
say "ofexp $(.venv/bin/python -c 'import ofexp; print(ofexp.__version__)') is ready: .venv/bin/ofexp --help"
