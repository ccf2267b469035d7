#!/usr/bin/env bash
# Create the virtual environment MONAI Label 0.8.5 runs in, apart from the bundle's own .venv.
#
# MONAI Label 0.8.5's dependencies hold back packages the bundle's environment has newer releases of (pydicom-seg,
# which its server imports at start-up, needs numpy<2 and a module pydicom 3 removed): installing it into .venv would
# downgrade them there. Its own environment keeps both working. Safe to re-run: an environment already built from the
# same requirements is left as it is (pass --force to rebuild it).
#
# Usage: monailabel/setup_monailabel.sh [--force]
# Environment: MONAILABEL_VENV (default <repo>/.venv-monailabel), PYTHON (default python3, 3.10 or newer).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MONAILABEL_VENV:-$REPO/.venv-monailabel}"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS="$REPO/monailabel/requirements.txt"
STAMP="$VENV/.requirements.sha256"

force=false
for arg in "$@"; do
    case "$arg" in
        --force) force=true ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

wanted="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if ! $force && [ -x "$VENV/bin/monailabel" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$wanted" ]; then
    echo "MONAI Label environment up to date: $VENV"
    exit 0
fi

start=$(date +%s)
if $force || [ ! -x "$VENV/bin/python" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"
# the local package mirrors configured on some machines warn once per package about folders they lack: not errors
"$VENV/bin/python" -m pip install -q -r "$REQUIREMENTS" 2> >(grep -v "^WARNING: Location" >&2)
# import what the server imports at start-up, so a broken combination fails here and not when the server starts
"$VENV/bin/python" - <<'EOF'
import highdicom  # noqa: F401
import monai
import monailabel
import numpy
import pydicom
import pydicom_seg  # noqa: F401
import torch
import torchvision
from monailabel.tasks.infer.bundle import BundleInferTask  # noqa: F401
from monailabel.tasks.train.bundle import BundleTrainTask  # noqa: F401

print(f"monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, numpy {numpy.__version__}, pydicom {pydicom.__version__}")
EOF
# both environments install the same torch wheel (about 5 GB of CUDA libraries): where the bundle's .venv is beside this
# one, identical files become hard links, so the second copy costs no disk (pip replaces a file rather than writing into
# it, so upgrading either environment later leaves the other as it was)
BUNDLE_SITE="$(echo "$REPO"/.venv/lib/python3*/site-packages)"
if command -v hardlink >/dev/null && [ -d "$BUNDLE_SITE" ]; then
    hardlink -q -t -s 1M "$BUNDLE_SITE" "$VENV"/lib/python3*/site-packages || echo "hardlink failed: environments kept as copies" >&2
fi
echo "$wanted" > "$STAMP"
# du counts a file linked into both environments once, under the first folder it is given
echo "MONAI Label environment ready in $(( $(date +%s) - start )) s: $VENV" \
    "($(du -shc "$REPO/.venv" "$VENV" 2>/dev/null | sed -n 2p | cut -f1) beside .venv)"
