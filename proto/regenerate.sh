#!/usr/bin/env bash
# Regenerate the Python bindings for every proto/*.proto (caffe.proto, and any
# schema added later) and record the generator versions in proto/GENERATOR.txt.
#
# Usage (from anywhere):   proto/regenerate.sh
# Needs grpcio-tools:      pip install -e '.[proto]'
#
# Uses the `python` on PATH (activate the project's virtualenv first), or the
# interpreter named by $PYTHON.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

python="${PYTHON:-python}"
if ! command -v "$python" >/dev/null 2>&1; then
    echo "regenerate.sh: '$python' not found; activate the project's virtualenv or set PYTHON=" >&2
    exit 1
fi

if ! "$python" -c "import grpc_tools.protoc" >/dev/null 2>&1; then
    echo "regenerate.sh: grpcio-tools is not installed for $("$python" -c 'import sys; print(sys.executable)' 2>/dev/null || echo "$python")." >&2
    echo "Install it with:  pip install -e '.[proto]'" >&2
    exit 1
fi

shopt -s nullglob
protos=(proto/*.proto)
shopt -u nullglob
if [ "${#protos[@]}" -eq 0 ]; then
    echo "regenerate.sh: no .proto files in $repo_root/proto" >&2
    exit 1
fi

"$python" -m grpc_tools.protoc -I proto --python_out=proto --pyi_out=proto "${protos[@]}"

grpcio_tools_version="$("$python" -c 'from importlib.metadata import version; print(version("grpcio-tools"))')"
protoc_version="$("$python" -m grpc_tools.protoc --version)"
protobuf_version="$("$python" -c 'import google.protobuf; print(google.protobuf.__version__)')"
# The generated modules refuse to import on a protobuf runtime older than this (their header says which).
gencode_version="$(sed -n 's/^# Protobuf Python Version: //p' proto/*_pb2.py | sort -u | tr '\n' ' ')"

cat > proto/GENERATOR.txt <<EOF
# Written by proto/regenerate.sh; do not edit by hand.
sources: ${protos[*]}
grpcio-tools: ${grpcio_tools_version}
protoc (bundled with grpcio-tools): ${protoc_version}
protobuf runtime (at generation): ${protobuf_version}
generated code needs protobuf >= ${gencode_version% }
date: $(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF

echo "regenerated: ${protos[*]} -> proto/*_pb2.py, proto/*_pb2.pyi (see proto/GENERATOR.txt)"
