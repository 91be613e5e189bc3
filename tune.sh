#!/usr/bin/env bash
# Sweep one layer's threshold (--tune_layer NAME [--tune_diff VALUE]) and write every candidate int8 model.
# Same options as `python main.py tune --help`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python}" "$here/main.py" tune "$@"
