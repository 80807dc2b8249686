#!/usr/bin/env bash
# The demo: a throwaway PostgreSQL and webhook receiver, a small app writing orders, and
# sluice delivering every committed change as a signed webhook. Everything is cleaned up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p sluice -p sluice-demo
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target_dir/release/sluice-demo"
