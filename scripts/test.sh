#!/usr/bin/env bash
# The test command of the README: installs what a fresh machine lacks, starts a real
# Kafka-protocol broker (tansu, twice: memory and SQLite storage) on 127.0.0.1, and runs every
# test of the workspace against it and against the embedded broker.
#
#   scripts/test.sh            # everything
#   scripts/test.sh dedup      # extra arguments go to `cargo nextest run --workspace`
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test.sh] %s\n' "$*" >&2; }

# 1. System packages: OpenSSL headers for rdkafka's `ssl` feature; kcat to inspect topics;
#    sqlite3 for the chaos test.
missing=()
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
# The chaos test reads (and repairs) tansu's consumer-group tables with the sqlite3 shell.
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Tools: cargo-nextest, and tansu (a real Kafka-protocol broker; ~17 min to build cold,
#    then cached in ~/.cargo/bin).
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
TANSU="${TANSU:-$(command -v tansu || true)}"
if [ -z "$TANSU" ]; then
  log "building tansu (first time only)"
  cargo install tansu --locked --features dynostore,libsql
  TANSU="$(command -v tansu)"
fi

# 3. Two tansu brokers on free loopback ports, stopped on exit:
#    - memory storage (M365_TEST_KAFKA), fast, for most real-broker tests;
#    - SQLite storage (M365_TEST_KAFKA_SQLITE), much slower, for tests whose readers pause and
#      resume: tansu 0.6's memory engine answers a fetch that starts inside a record batch
#      with the *next* batch (records skipped), the SQLite engine from the requested offset.
tansu_dir=$(mktemp -d -t tansu.XXXXXX)
tansu_pids=()
trap 'kill "${tansu_pids[@]}" 2>/dev/null || true; wait "${tansu_pids[@]}" 2>/dev/null || true; rm -rf "$tansu_dir"' EXIT
start_tansu() { # ENGINE LOGFILE: starts one broker and sets TANSU_PORT
  local engine="$1" logf="$2" port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  (cd "$tansu_dir" && exec "$TANSU" broker \
    --storage-engine "$engine" \
    --listener-url "tcp://127.0.0.1:${port}" \
    --advertised-listener-url "tcp://127.0.0.1:${port}") >"$logf" 2>&1 &
  tansu_pids+=($!)
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then break; fi
    if ! kill -0 "$!" 2>/dev/null; then log "tansu ($engine) failed to start:"; cat "$logf" >&2; exit 1; fi
    sleep 0.1
  done
  TANSU_PORT=$port
}
start_tansu memory://tansu/ "$tansu_dir/memory.log"
export M365_TEST_KAFKA="127.0.0.1:${TANSU_PORT}"
start_tansu sqlite://tansu.db "$tansu_dir/sqlite.log"
export M365_TEST_KAFKA_SQLITE="127.0.0.1:${TANSU_PORT}"
log "tansu listening on ${M365_TEST_KAFKA} (memory) and ${M365_TEST_KAFKA_SQLITE} (SQLite)"

# 4. A one-shot run (CI) gains nothing from incremental compilation, which would add ~6 GB of
#    caches to a ~3 GB build; CI's machine has run out of disk before. Say what is free.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
log "disk free here: $(df -h --output=avail . | tail -1 | tr -d ' ')"

# 5. The tests. The real-broker tests read M365_TEST_KAFKA; CI sets CI=true, which makes them
#    fail (rather than skip) when it is missing.
cargo nextest run --workspace --no-fail-fast "$@"
