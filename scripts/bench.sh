#!/usr/bin/env bash
# The benchmark command of the README (issue #8): installs what a fresh Debian machine lacks
# (rsyslog with its Kafka and GnuTLS modules, a Python venv with devo-sdk, the tansu broker),
# builds the release binaries, starts tansu on 127.0.0.1 (memory storage), and runs
# m365-bench, which prints a table and writes bench/RESULTS.md.
#
#   scripts/bench.sh            # full run (about 15-25 minutes on 2 cores, once built)
#   scripts/bench.sh --quick    # smoke test: small data set, small memory blobs
#   scripts/bench.sh --only consumer,forwarder --runs 5   # any m365-bench option
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[bench.sh] %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

# 1. System packages: OpenSSL headers (rdkafka's `ssl`), pkg-config, rsyslog and its imkafka
#    and gnutls modules (the comparison), kcat (links the same librdkafka as imkafka: tells
#    why rsyslog cannot read a broker), python3-venv (devo-sdk).
missing=()
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
for p in rsyslog rsyslog-kafka rsyslog-gnutls kcat; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The package may start a system rsyslogd; the benchmark runs its own with its own config.

# 2. devo-sdk in a venv of its own.
VENV="${M365_BENCH_VENV:-target/bench-venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import devo.sender' >/dev/null 2>&1; then
  log "creating $VENV with devo-sdk"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q devo-sdk
fi

# 3. tansu, the real Kafka-protocol broker (same install as scripts/test.sh; ~17 min cold).
TANSU="${TANSU:-$(command -v tansu || true)}"
if [ -z "$TANSU" ]; then
  log "building tansu (first time only)"
  cargo install tansu --locked --features dynostore,libsql
  TANSU="$(command -v tansu)"
fi

# 4. The release binaries.
log "building the release binaries"
cargo build --release -p m365-bench -p m365-devo -p m365-consumer -p m365-forwarder -p m365-sim

# 5. tansu on a free loopback port, stopped on exit.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Memory storage. tansu 0.6's memory engine answers a fetch that starts inside a record batch
# with the next batch, so a reader that pauses and resumes mid-batch would skip records; the
# forwarder pauses only after waiting pause_after (3 s) for Devo, which a benchmark does not
# do, and every run checks that all records arrived. (SQLite storage has no such bug but its
# fetch re-reads the partition tail: it stalls under this load.)
mkdir -p target/bench-work
tansu_log=target/bench-work/tansu.log
(cd target/bench-work && exec "$TANSU" broker \
  --storage-engine memory://tansu/ \
  --listener-url "tcp://127.0.0.1:${port}" \
  --advertised-listener-url "tcp://127.0.0.1:${port}") >"$tansu_log" 2>&1 &
tansu_pid=$!
trap 'kill $tansu_pid 2>/dev/null || true; wait $tansu_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then break; fi
  if ! kill -0 "$tansu_pid" 2>/dev/null; then log "tansu failed to start:"; cat "$tansu_log" >&2; exit 1; fi
  sleep 0.1
done
log "tansu listening on 127.0.0.1:${port} (log: ${tansu_log})"

# 6. The benchmark.
target/release/m365-bench \
  --kafka "127.0.0.1:${port}" --kafka-name tansu \
  --python "$VENV/bin/python" \
  --bin-dir target/release \
  "$@"
