#!/usr/bin/env bash
# Run the project's Python under onnxruntime's AVX2 int8 kernels (x86 without VNNI), on any x86-64 host.
#
# onnxruntime picks its int8 kernels from CPUID. On a VNNI/AMX machine it never runs the AVX2 U8S8 kernels,
# whose int16 pair saturation tests/test_saturation.py checks bit for bit. qemu's user-mode emulator
# (Debian's qemu-user, 7.2 or later: its TCG implements AVX2 but no AVX-512 and no VNNI) runs the same
# interpreter and wheels on an emulated Haswell, so onnxruntime takes the AVX2 path for real.
#
# Usage: scripts/emulate_avx2.sh [python arguments...]
#   default: -m pytest -q -p no:cacheprovider tests/test_saturation.py
#   e.g.     scripts/emulate_avx2.sh -m pytest -q tests/test_saturation.py -k real
#            scripts/emulate_avx2.sh -c "import onnxruntime; print(onnxruntime.__version__)"
# Environment: PYTHON (default .venv/bin/python), EMULATED_CPU (default Haswell without TSX and without the
# system features TCG cannot emulate, which only print warnings).
#
# Caveats: about 10x slower than native; only this Python process is emulated (subprocesses it starts run
# natively); /proc/cpuinfo still shows the real CPU, so INT8TUNE_INT8_PATH=avx2 is exported for
# int8tune.hostcpu. Installs qemu-user with apt-get when missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(uname -m)" != x86_64 ]; then
    echo "emulate_avx2.sh: needs an x86-64 host (qemu-x86_64 emulates x86-64 user space)" >&2
    exit 2
fi
if ! command -v qemu-x86_64 >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null
    else
        echo "emulate_avx2.sh: qemu-x86_64 not found; install Debian's qemu-user" >&2
        exit 2
    fi
fi

PYTHON="${PYTHON:-.venv/bin/python}"
CPU="${EMULATED_CPU:-Haswell-noTSX,-pcid,-x2apic,-tsc-deadline,-invpcid}"
if [ $# -eq 0 ]; then
    set -- -m pytest -q -p no:cacheprovider tests/test_saturation.py
fi
export INT8TUNE_INT8_PATH=avx2
exec qemu-x86_64 -cpu "$CPU" "$PYTHON" "$@"
