#!/usr/bin/env bash
# Install a2d2c with everything its tests and default job need, on a fresh machine.
#   - torch/torchvision at the versions this project is tested with
#   - the package in editable mode with its dev extras
#   - Fashion-MNIST for the offline default job (`a2d2c train`): Debian's package when apt is there,
#     otherwise torchvision downloads it into data/ (needs internet).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
      || echo "setup: could not install Debian's dataset-fashion-mnist"
  else
    echo "setup: no apt (or not root)"
  fi
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ ! -d data/FashionMNIST/raw ]; then
  echo "setup: downloading Fashion-MNIST into data/ with torchvision"
  "$PY" -c "import torchvision as tv; [tv.datasets.FashionMNIST('data', train=t, download=True) for t in (True, False)]" \
    || echo "setup: Fashion-MNIST download failed; see README (Training and evaluation)"
fi
echo "setup: done (next: a2d2c train)"
