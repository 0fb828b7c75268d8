#!/usr/bin/env bash
# Set-up on a fresh machine: the real Fashion-MNIST images from Debian's package (the demo and the data tests read
# them), then keras_dla with its test tools in .venv. `sudo` where there is one, nothing in a root container.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  sudo=$(command -v sudo || true)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
[ -d .venv ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# --no-compile: Python compiles a module when it is first imported instead of all ~9 GB of packages up front.
.venv/bin/python -m pip install -q --no-compile -e ".[test]"
