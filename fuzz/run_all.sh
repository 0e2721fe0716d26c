#!/usr/bin/env bash
# Runs every fuzz target in turn for MINUTES minutes each (default 10), on the stable toolchain
# (RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z flags), with libFuzzer's coverage
# instrumentation and no sanitizer (-s none: the code under test is safe Rust; see README.md).
# Logs go to fuzz/logs/<target>.log; new inputs land in corpus/<target>/, crashes in artifacts/.
# Usage: fuzz/run_all.sh [MINUTES] [TARGET...]   (needs `cargo install cargo-fuzz`)
set -euo pipefail
cd "$(dirname "$0")"
minutes="${1:-10}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(split config token_response listing framing)
fi
secs=$((minutes * 60))
mkdir -p logs
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none -O
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== $t: ${minutes} min"
    # -max_total_time bounds the fuzzing; the outer timeout only guards a stuck rebuild.
    # -rss_limit_mb: a blown-up allocation is a finding; -timeout: a hang is a finding.
    timeout $((secs + 300)) nice -n 10 cargo fuzz run -s none -O "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=16384 \
        </dev/null >"logs/$t.log" 2>&1 || echo "   $t stopped with status $? (see logs/$t.log)"
    tail -n 3 "logs/$t.log"
done
