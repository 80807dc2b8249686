#!/usr/bin/env bash
# The test suite: unit tests, then end-to-end scenarios against real PostgreSQL clusters and
# HTTP receivers that the harness starts on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace
