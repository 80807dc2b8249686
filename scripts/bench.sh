#!/usr/bin/env bash
# Benchmarks: builds release binaries of sluice and sluice-bench, then runs the benchmark
# (a throwaway PostgreSQL cluster, pg_recvlogical as the ceiling, sluice with each sink,
# a latency run) and prints one table. Arguments go to sluice-bench, e.g.
#   bash scripts/bench.sh --rows 200000 --out bench.md
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p sluice -p sluice-bench
# The blackhole-wasm and blackhole-keep rows run trivial transforms: build the examples.
transforms="$(SLUICE_SKIP_PYTHON=1 bash scripts/build-transforms.sh | tail -n 1)"
export SLUICE_BENCH_IDENTITY_WASM="$transforms/identity.wasm"
export SLUICE_BENCH_PASSTHROUGH_WASM="$transforms/passthrough.wasm"
SLUICE_BIN="$target/release/sluice" exec "$target/release/sluice-bench" "$@"
