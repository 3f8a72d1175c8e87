#!/usr/bin/env bash
# Install Fashion-MNIST, ofexp's real benchmark, from Debian's package
# dataset-fashion-mnist: the four original .gz files (30 MB) in
# /usr/share/datasets/fashion-mnist. tests/data/test_fashion_mnist.py reads them
# (and skips, naming this package, where they are missing). Idempotent.
set -euo pipefail

DIR=/usr/share/datasets/fashion-mnist
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -f "$DIR/train-images-idx3-ubyte.gz" ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
echo "Fashion-MNIST: $(ls "$DIR" | wc -l) files in $DIR" >&2
