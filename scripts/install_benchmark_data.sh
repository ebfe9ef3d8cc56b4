#!/usr/bin/env bash
# Data that only benchmarks/transfer.py reads and that comes from Debian's packages, not PyPI: Fashion-MNIST (real
# grayscale product photos, the 'fashion5k' dataset). Needs root (or sudo) and apt; skips if already installed.
set -euo pipefail
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
