#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv from pyproject.toml.
# Usage: bash workflow/scripts/install.sh      (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 10) else 1)'; then
  echo "install.sh: $PYTHON is $("$PYTHON" --version 2>&1); Python >= 3.10 is needed (3.11 tested)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "install.sh: environment ready in .venv ($(.venv/bin/python --version))"
