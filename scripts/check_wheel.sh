#!/usr/bin/env bash
# Build the wheel from a clean copy of this checkout, install it into a fresh virtual
# environment outside the checkout (reusing the system's torch), and run the installed
# command from another folder: a one-epoch training on a tiny subset, then the listings.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/a2d2c-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# 1. the wheel, built from the files git would ship (no stale build/ folder involved)
mkdir -p "$WORK/src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && mkdir -p "$WORK/src/$(dirname "$f")" && cp -p "$f" "$WORK/src/$f"
done
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
  -w "$WORK/dist" "$WORK/src" >/dev/null
WHEEL=$(ls "$WORK"/dist/a2d2c-*.whl)
echo "check_wheel: built $(basename "$WHEEL")"

# 2. a fresh venv; --system-site-packages reuses torch, and the venv's own copy of a2d2c
#    comes first on sys.path (before any editable install in the system site)
"$PY" -m venv --system-site-packages "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$WHEEL"
mkdir -p "$WORK/elsewhere"
cd "$WORK/elsewhere"
"$VPY" - "$WORK/venv" <<'PYEOF'
import sys
from pathlib import Path

import a2d2c

where = Path(a2d2c.__file__).resolve()
venv = Path(sys.argv[1]).resolve()
assert where.is_relative_to(venv), f"a2d2c imported from {where}, not from the venv {venv}"
print(f"check_wheel: a2d2c {a2d2c.__version__} from {where.parent}")
PYEOF
A2D2C="$WORK/venv/bin/a2d2c"

# 3. the installed command, from a folder that holds nothing of the checkout
"$A2D2C" train --data.train_samples 256 --data.val_samples 256 --data.eval_batch_size 256 \
  --train.epochs 1 --train.output_dir "$WORK/run" --train.progress false > "$WORK/train.log" 2>&1 \
  || { cat "$WORK/train.log"; exit 1; }
tail -n 2 "$WORK/train.log"
test -f "$WORK/run/last.pt" || { echo "check_wheel: no checkpoint written"; exit 1; }
"$A2D2C" study --list > "$WORK/studies.txt"
grep -q "^main " "$WORK/studies.txt" || { echo "check_wheel: study --list lacks main"; exit 1; }
"$A2D2C" configs > "$WORK/configs.txt"
grep -qx "fashion_mnist_default" "$WORK/configs.txt"
grep -qx "detection/maskrcnn_shapes_tiny" "$WORK/configs.txt"
"$A2D2C" models > "$WORK/models.txt"
grep -qx "resnet18_a2d2c" "$WORK/models.txt"
echo "check_wheel: ok ($(wc -l < "$WORK/studies.txt") studies, $(wc -l < "$WORK/configs.txt")" \
  "recipes, $(wc -l < "$WORK/models.txt") models)"
