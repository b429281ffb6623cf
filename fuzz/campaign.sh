#!/usr/bin/env bash
# Runs one fuzzing campaign and prints its row for the "Runs" table of docs/FUZZING.md.
#
#   fuzz/campaign.sh TARGET SECONDS [MAX_LEN] [--no-trace-compares]
#
# The target is built without a sanitizer (the crate has no `unsafe`; a campaign looks for
# panics, aborts, timeouts and memory blow-ups) and copied out of the build directory, so that
# later builds do not replace it while it runs. New inputs go to fuzz/corpus/TARGET, crashes
# to fuzz/artifacts/TARGET/. The log is kept in fuzz/artifacts/TARGET/campaign-*.log.
#
# --no-trace-compares builds without libFuzzer's comparison tracing: about twice the
# executions per second on the stream-level targets, without the guidance towards the
# operands of comparisons. The row says which build ran.
set -euo pipefail

usage() {
    echo "usage: $0 TARGET SECONDS [MAX_LEN] [--no-trace-compares]" >&2
    exit 2
}
[ $# -ge 2 ] || usage
target=$1
seconds=$2
max_len=${3:-65536}
trace=yes
build_flags=()
if [ "${4:-}" = --no-trace-compares ] || [ "${3:-}" = --no-trace-compares ]; then
    trace=no
    build_flags=(--no-trace-compares --target-dir target/no-trace-compares)
    [ "${3:-}" = --no-trace-compares ] && max_len=65536
fi
case $seconds in '' | *[!0-9]*) usage ;; esac
case $max_len in '' | *[!0-9]*) usage ;; esac

cd "$(dirname "$0")"
[ -f "fuzz_targets/$target.rs" ] || { echo "no target $target" >&2; exit 2; }
RUSTC_BOOTSTRAP=1 cargo fuzz build -s none "${build_flags[@]}" "$target" >&2
host=$(rustc -vV | sed -n 's/^host: //p')
built="${build_flags[2]:-target}/$host/release/$target"
mkdir -p "corpus/$target" "artifacts/$target"
binary=$(mktemp "artifacts/$target/campaign-bin.XXXXXX")
cp "$built" "$binary"
chmod 755 "$binary"
started=$(date -u '+%Y-%m-%d %H:%M')
log="artifacts/$target/campaign-$(date -u +%Y%m%dT%H%M%S).log"
marker=$(mktemp)
begin=$(date +%s)
status=0
# Each run allocates and frees a few hundred KiB (a stream written, guest memory); with
# glibc's defaults those go back to the kernel and come back as fresh zeroed pages every
# run. Keeping them in the heap gives about 1.5 times the executions on `structured`.
GLIBC_TUNABLES=glibc.malloc.trim_threshold=4000000000:glibc.malloc.mmap_threshold=33554432:glibc.malloc.top_pad=268435456 \
nice -n 10 "$binary" "corpus/$target" "seeds/$target" \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="artifacts/$target/" >"$log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - begin ))
rm -f "$binary"

executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
corpus=$(find "corpus/$target" -type f | wc -l)
crashes=$(find "artifacts/$target" -maxdepth 1 -type f -newer "$marker" \
    \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
rm -f "$marker"
per_second=$(( ${executions:-0} / (elapsed > 0 ? elapsed : 1) ))
echo "exit status $status; log $log" >&2
printf '| %s | `%s` | %d | %d | %s | %s | %s | %d | %d |\n' "$started" "$target" "$elapsed" \
    "$max_len" "$trace" "$(printf "%'d" "${executions:-0}")" "$(printf "%'d" "$per_second")" \
    "$corpus" "$crashes"
