#!/usr/bin/env bash
# The test suite: unit tests, then end-to-end scenarios against real PostgreSQL clusters and
# HTTP receivers that the harness starts on free loopback ports, and WebAssembly transforms
# built from examples/transforms.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The transform tests run the example components: build them (nothing prebuilt is committed).
bash scripts/build-transforms.sh
cargo test --workspace
