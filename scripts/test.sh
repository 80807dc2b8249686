#!/usr/bin/env bash
# The test suite: unit tests, then end-to-end scenarios against real PostgreSQL clusters and
# HTTP receivers that the harness starts on free loopback ports, and WebAssembly transforms
# built from examples/transforms.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The transform tests run the example components: build them (nothing prebuilt is committed).
bash scripts/build-transforms.sh
# The SDK is published on its own: it must carry the WIT world it is generated from.
(cd sdk/rust && cargo package --list --allow-dirty | grep -qx 'wit/sluice-transform-0.1/world.wit') \
  || { echo "error: the sluice-transform package lacks wit/sluice-transform-0.1/world.wit" >&2; exit 1; }
cargo test --workspace
