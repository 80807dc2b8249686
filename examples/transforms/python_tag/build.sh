#!/usr/bin/env bash
# Builds python_tag.wasm (a component of sluice:transform/transformer) with componentize-py.
# Usage: build.sh [OUTPUT]   (default: ./python_tag.wasm). Needs `componentize-py` (0.25.1:
# `pip install componentize-py==0.25.1`); scripts/build-transforms.sh installs it if missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/python_tag.wasm}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
cd "$here"
componentize-py -d ../../../wit/sluice-transform-0.1 -w transformer componentize app -o "$out"
