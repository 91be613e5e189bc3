#!/usr/bin/env bash
# The peer quantizers' virtual environment, apart from the project's own .venv (their pins clash with ours:
# numpy<2, onnx 1.18). One venv holds all five peers; every top-level package is pinned with ==.
#
#   bash bench/peers/setup.sh                 # -> /work/main/.venv-peers (or $PEERS_VENV)
#
# Why these versions:
# - neural-compressor 3.7.1 is the last release with the ONNX Runtime adaptor; it needs numpy<2, setuptools<81
#   (pkg_resources) and six, and its opencv-python-headless must be a release that still accepts numpy 1.x.
# - ppq 0.6.6 and INC want onnx<1.19 -> onnx 1.18.0; onnxruntime 1.23.2 reads IR 11 / opset 23 (onnx 1.18)
#   and still runs on numpy 1.26. protobuf 5.29: >= what onnx 1.18 needs, and ppq runs with
#   PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python (the runners set it themselves).
# - aimet-onnx: torch 2.13.0 first (the machine's local CPU wheel), then aimet-onnx with --no-deps and only the
#   dependencies its quantsim / mixed-precision code imports. Left out on purpose: onnx2torch (needs torchvision,
#   which drags in a CUDA torch; only aimet's adascale uses it), hvplot and osqp (plots and curve fitting of
#   aimet's compression tools), pybind11 (build time). `pip check` therefore lists those four as missing.
# - ml_dtypes 0.5.4: 0.6 needs numpy 2 (onnx-ir / onnxscript depend on it).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${PEERS_VENV:-$REPO/.venv-peers}"
PYTHON_BIN="${PYTHON:-python3}"

TORCH="torch==2.13.0"
AIMET="aimet-onnx==2.42.0"
PINS=(
    numpy==1.26.4
    onnx==1.18.0
    onnxruntime==1.23.2
    protobuf==5.29.5
    setuptools==80.9.0
    six==1.17.0
    pandas==2.3.3
    opencv-python-headless==4.11.0.86
    ml_dtypes==0.5.4
    nncf==3.4.0
    neural-compressor==3.7.1
    ppq==0.6.6
    # aimet-onnx's dependencies, the ones it really imports
    onnx-ir==1.1.0
    onnxscript==0.7.2
    bokeh==3.9.2
    jsonschema==4.26.0
    scipy==1.17.1
    scikit-learn==1.9.1
    tqdm==4.70.1
    PyYAML==6.0.4
    Jinja2==3.1.6
    psutil==7.2.2
)

step() { echo; echo "== $*"; }
fail() { echo "setup.sh: FAILED: $*" >&2; exit 1; }

step "virtual environment $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON_BIN" -m venv "$VENV" || fail "could not create the venv at $VENV with $PYTHON_BIN"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || fail "needs Python 3.11 (the local torch 2.13.0 CPU wheel is cp311)"

# torch first: with it installed, nothing later can ask pip for a (CUDA) torch.
step "$TORCH (CPU build from the machine's local wheel)"
"${PIP[@]}" install "$TORCH" || fail "pip install $TORCH"
"$PY" - <<'EOF' || fail "torch is not the CPU build"
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert torch.version.cuda is None, f"CUDA build of torch: {torch.version.cuda}"
print("torch", torch.__version__, "(cpu)")
EOF

step "onnx / onnxruntime / nncf / neural-compressor / ppq and aimet-onnx's dependencies"
"${PIP[@]}" install "$TORCH" "${PINS[@]}" || fail "pip install of the pinned set"

step "$AIMET (--no-deps)"
"${PIP[@]}" install --no-deps "$AIMET" || fail "pip install --no-deps $AIMET"

step "import check"
PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python "$PY" - <<'EOF' 2>"$VENV/import_check.log" \
    || { cat "$VENV/import_check.log" >&2; fail "a peer does not import (log above)"; }
import importlib.metadata as md
import numpy, onnx, onnxruntime, torch
import onnxruntime.quantization
import nncf
import neural_compressor
from neural_compressor import PostTrainingQuantConfig, quantization  # the 2.x API, ONNX Runtime adaptor
import aimet_onnx.quantsim, aimet_onnx.mixed_precision
import ppq.api
assert numpy.__version__.startswith("1."), numpy.__version__
assert torch.version.cuda is None
for name in ("numpy", "onnx", "onnxruntime", "protobuf", "torch", "nncf", "neural-compressor", "aimet-onnx", "ppq",
             "onnxscript", "onnx-ir", "setuptools"):
    print(f"  {name}=={md.version(name)}")
EOF
step "installed (pip freeze, also in $VENV/peers-freeze.txt)"
"${PIP[@]}" freeze --all | tee "$VENV/peers-freeze.txt"
echo
echo "peers venv ready: $VENV"
echo "(pip check reports aimet-onnx's onnx2torch, hvplot, osqp and pybind11 missing: left out on purpose)"
