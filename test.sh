#!/usr/bin/env bash
# The fp32-vs-int8 difference of one layer (--int8_layer NAME) or of the whole model plus every int8 layer.
# Same options as `python main.py test --help`; writes <output_path>/report.log.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python}" "$here/main.py" test "$@"
