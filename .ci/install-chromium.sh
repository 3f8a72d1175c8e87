#!/usr/bin/env bash
# Install Debian's Chromium and its chromedriver for the UI browser test
# (tests/ui/test_browser.py, driven by Selenium from the `test` extra). Idempotent
# and quiet: does nothing where both binaries are already there.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# Selenium comes with `pip install -e .[test]` (./setup.sh); install it if an older venv lacks it.
if [ -x .venv/bin/python ] && ! .venv/bin/python -c "import selenium" 2>/dev/null; then
  .venv/bin/python -m pip install -q "selenium>=4.20" 2>/dev/null
fi
