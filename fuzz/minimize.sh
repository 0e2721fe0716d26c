#!/usr/bin/env bash
# Shrinks corpus/<target>/ to a small set with the same edge coverage (libFuzzer's greedy
# set-cover merge on edges only, without hit-count features), then re-adds the seeds.
# Keeps the committed corpora at a few hundred KB each. Usage: fuzz/minimize.sh TARGET...
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none -O
bin=target/x86_64-unknown-linux-gnu/release
for t in "$@"; do
    tmp="$(mktemp -d)"
    "$bin/$t" -set_cover_merge=1 -use_counters=0 -rss_limit_mb=2048 -timeout=10 \
        -max_len=16384 "$tmp" "corpus/$t" </dev/null >/dev/null 2>&1
    rm -rf "corpus/$t"
    mv "$tmp" "corpus/$t"
    echo "$t: $(ls "corpus/$t" | wc -l) inputs"
done
python3 seeds/make_seeds.py
