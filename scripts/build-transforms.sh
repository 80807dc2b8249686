#!/usr/bin/env bash
# Builds every example transform (examples/transforms) into WebAssembly components and copies
# them to ${SLUICE_TRANSFORMS_DIR:-<repo>/target/transforms}/<name>.wasm, where the tests and
# the demo look for them. Idempotent: installs only what is missing (the wasm32-wasip2 Rust
# target; componentize-py 0.25.1 when it is not on PATH), and rebuilds only what changed.
#
#   scripts/build-transforms.sh              # all of them
#   SLUICE_SKIP_PYTHON=1 scripts/build-transforms.sh   # the Rust ones only
#
# Honours CARGO_TARGET_DIR (the Rust outputs then live under
# $CARGO_TARGET_DIR/wasm32-wasip2/release/). Prints the output directory last.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
examples="$root/examples/transforms"
wit="$root/wit/sluice-transform-0.1"
out="${SLUICE_TRANSFORMS_DIR:-$root/target/transforms}"
rust_transforms=(redact_pii order_doc route_by_status identity passthrough hostile)
componentize_py_version=0.25.1

log() { echo "build-transforms: $*" >&2; }

# --- tools ------------------------------------------------------------------------------
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  log "installing the wasm32-wasip2 Rust target"
  rustup target add wasm32-wasip2 >&2
fi

build_python=1
[ "${SLUICE_SKIP_PYTHON:-0}" = 1 ] && build_python=0
if ((build_python)) && ! command -v componentize-py >/dev/null 2>&1; then
  log "installing componentize-py $componentize_py_version"
  python3 -m pip install --quiet --disable-pip-version-check "componentize-py==$componentize_py_version" >&2
  hash -r
  if ! command -v componentize-py >/dev/null 2>&1; then
    # A user install puts the command under the user base, which may not be on PATH.
    PATH="$(python3 -m site --user-base)/bin:$PATH"
    command -v componentize-py >/dev/null 2>&1 || {
      log "componentize-py is installed but not on PATH"
      exit 1
    }
  fi
fi

mkdir -p "$out"

# Copy to a temporary name first, so a reader never sees half a file.
install_wasm() {
  local from="$1" name="$2"
  cp "$from" "$out/.$name.wasm.tmp"
  mv -f "$out/.$name.wasm.tmp" "$out/$name.wasm"
}

# --- Rust ---------------------------------------------------------------------------------
start=$SECONDS
log "building ${rust_transforms[*]} (cargo, wasm32-wasip2, release)"
cargo build --release --target wasm32-wasip2 --manifest-path "$examples/Cargo.toml" >&2
target_dir="$(cargo metadata --format-version 1 --no-deps --manifest-path "$examples/Cargo.toml" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
for name in "${rust_transforms[@]}"; do
  install_wasm "$target_dir/wasm32-wasip2/release/$name.wasm" "$name"
done
log "rust transforms done in $((SECONDS - start)) s"

# --- Python -------------------------------------------------------------------------------
if ((build_python)); then
  python_out="$out/python_tag.wasm"
  app="$examples/python_tag"
  # componentize-py takes ~20 s and its output is not byte-reproducible: skip it when the
  # component is newer than its sources, so the host's compile cache stays warm.
  if [ -f "$python_out" ] && [ -z "$(find "$app" "$wit" -newer "$python_out" \( -name '*.py' -o -name '*.wit' -o -name build.sh \) -print -quit)" ]; then
    log "python_tag is up to date"
  else
    start=$SECONDS
    log "building python_tag (componentize-py $(componentize-py --version | awk '{print $2}'))"
    tmp="$out/.python_tag.build.wasm"
    "$app/build.sh" "$tmp" >&2
    mv -f "$tmp" "$python_out"
    log "python_tag done in $((SECONDS - start)) s"
  fi
fi

# --- check --------------------------------------------------------------------------------
# A component starts with the wasm magic and the component layer's version (0x0d 0x00 0x01 0x00).
for f in "$out"/*.wasm; do
  magic="$(head -c 8 "$f" | od -An -tx1 | tr -d ' \n')"
  if [ "$magic" != 0061736d0d000100 ]; then
    log "$f is not a WebAssembly component (header $magic)"
    exit 1
  fi
done
if command -v wasm-tools >/dev/null 2>&1; then
  for f in "$out"/*.wasm; do
    wasm-tools component wit "$f" | grep -q 'export transform: func' || {
      log "$f does not export the transformer world"
      exit 1
    }
  done
fi

ls -l "$out"/*.wasm >&2
echo "$out"
