#!/usr/bin/env bash
# bench-scale.sh: vmstate on a real ~1 GiB QEMU migration stream, against reading the file.
#
# Builds vmstate (release), makes the stream with ../shared/tools/make-big-stream.sh unless it
# is cached under target/bench/ (QEMU and cpio are installed with apt-get when missing), warms
# the page cache, then runs, alternating and RUNS times each, `cat FILE > /dev/null` and each
# vmstate command, and prints for each: the median wall time, its ratio to the median of
# `cat` in the same run, and the peak resident memory (largest "Maximum resident set size"
# over the runs, from GNU time).
#
# Prints figures; asserts nothing. Not part of .ci/run.
#
# usage: scripts/bench-scale.sh          env: RUNS=5  STREAM=path (use this stream instead)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
BENCH=target/bench
STREAM=${STREAM:-$BENCH/big.mig}
SHARED=${SHARED:-../shared}
mkdir -p "$BENCH"
log() { printf '[bench-scale] %s\n' "$*" >&2; }

need_apt() {
    log "installing $*"
    [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ] \
        || apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
[ -x /usr/bin/time ] || need_apt time

log "building vmstate (release)"
cargo build --release --quiet -p vmstate-cli
VMSTATE=target/release/vmstate

if [ ! -s "$STREAM" ]; then
    command -v qemu-system-x86_64 >/dev/null || need_apt qemu-system-x86
    command -v cpio >/dev/null || need_apt cpio
    log "making $STREAM with $SHARED/tools/make-big-stream.sh (about a minute)"
    WORK="$PWD/$BENCH/work" OUTF="$STREAM" "$SHARED/tools/make-big-stream.sh"
fi
size=$(stat -c %s "$STREAM")

log "warming the page cache"
cat "$STREAM" > /dev/null
cat "$STREAM" > /dev/null

# name|command; the first is the reference.
benches=(
    "cat|cat $STREAM"
    "dump|$VMSTATE dump $STREAM"
    "dump --json|$VMSTATE dump --json $STREAM"
    "convert --strip-ram|$VMSTATE convert --strip-ram $STREAM $BENCH/stripped.mig"
    "check|$VMSTATE check $STREAM"
    "convert --ram rings|$VMSTATE convert --ram rings $STREAM $BENCH/rings.mig"
    "convert (to /dev/null)|$VMSTATE convert $STREAM /dev/null"
    "dump - (from a pipe)|cat $STREAM | $VMSTATE dump -"
    # Each writes a new file (the old one removed first, in the timing too).
    "cp --reflink=never|rm -f $BENCH/copy.mig && cp --reflink=never $STREAM $BENCH/copy.mig"
    "ram extract (by block)|rm -rf $BENCH/ram && $VMSTATE ram extract $STREAM $BENCH/ram"
    "ram extract --format elf|rm -f $BENCH/ram.elf && $VMSTATE ram extract --format elf $STREAM $BENCH/ram.elf"
)

results=$(mktemp)
rss=$(mktemp)
trap 'rm -f "$results" "$rss"' EXIT
for run in $(seq "$RUNS"); do
    log "run $run of $RUNS"
    for i in "${!benches[@]}"; do
        cmd=${benches[$i]#*|}
        start=$(date +%s%N)
        /usr/bin/time -f %M -o "$rss" bash -c "$cmd > /dev/null"
        end=$(date +%s%N)
        # For a pipe, GNU time reports the largest of the shell's children.
        echo "$i $(( end - start )) $(tail -n 1 "$rss")" >> "$results"
    done
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

cat_ns=$(awk '$1 == 0 { print $2 }' "$results" | median)
echo
echo "stream: $STREAM, $size bytes ($(( size >> 20 )) MiB); $RUNS runs each, alternating"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); $(uname -sr)"
printf '%-26s %10s %14s %14s\n' "command" "median s" "ratio to cat" "peak RSS MiB"
for i in "${!benches[@]}"; do
    name=${benches[$i]%%|*}
    ns=$(awk -v i="$i" '$1 == i { print $2 }' "$results" | median)
    kib=$(awk -v i="$i" '$1 == i && $3 > m { m = $3 } END { print m }' "$results")
    awk -v n="$name" -v ns="$ns" -v c="$cat_ns" -v k="$kib" \
        'BEGIN { printf "%-26s %10.3f %14.2f %14.1f\n", n, ns / 1e9, ns / c, k / 1024 }'
done
cp_ns=$(awk '$1 == 8 { print $2 }' "$results" | median)
for i in 9 10; do
    ns=$(awk -v i="$i" '$1 == i { print $2 }' "$results" | median)
    awk -v n="${benches[$i]%%|*}" -v ns="$ns" -v c="$cp_ns" \
        'BEGIN { printf "%s: %.2f x cp --reflink=never\n", n, ns / c }'
done
if [ -s "$BENCH/stripped.mig" ]; then
    echo "convert --strip-ram output: $(stat -c %s "$BENCH/stripped.mig") bytes"
fi
