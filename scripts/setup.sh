#!/usr/bin/env bash
# Installs what building and testing sluice needs, idempotently: a C compiler (SQLite is
# built from source), PostgreSQL server binaries (the tests and the demo start throwaway
# clusters with wal_level=logical), redis-server, rabbitmq-server and the tansu Kafka broker
# (started by the tests on free ports), what librdkafka builds with, and rustfmt/clippy. Safe to run again: it installs only
# what is missing.
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
# The Redis sink's tests and the demo start their own redis-server on a free port.
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The Kafka sink builds librdkafka from source (cmake) with TLS, OAUTHBEARER and gzip.
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
for pkg in libssl-dev libcurl4-openssl-dev zlib1g-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# The RabbitMQ sink's tests start their own rabbitmq-server nodes (each with its own epmd).
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1 ||
  missing+=(rabbitmq-server)

if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: please install: ${missing[*]} (apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's postgresql, redis-server and rabbitmq-server packages may start services of their
# own; sluice's tests and demo start theirs on free ports and never use those. A running
# RabbitMQ broker would hold 5672 and epmd's 4369 for nothing: stop it.
if [ "$(id -u)" -eq 0 ] && pgrep -u rabbitmq -x beam.smp >/dev/null 2>&1; then
  systemctl disable --now rabbitmq-server >/dev/null 2>&1 || service rabbitmq-server stop >/dev/null 2>&1 || true
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home /var/lib/postgresql --shell /bin/bash postgres
fi

for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

# The Kafka sink's tests start their own tansu broker (Apache Kafka-compatible, in-memory
# storage) per test. Built from crates.io once (~12 minutes on 2 cores), then found on PATH.
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
  echo "setup: building the tansu Kafka broker for the Kafka sink's tests (once)"
  cargo install tansu --version 0.6.0 --features dynostore --locked --quiet
fi
