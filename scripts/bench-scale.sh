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
# Commands that write a file are also given as a ratio to `cp` of the stream. With QEMU's
# scripts/analyze-migration.py at ANALYZE_MIGRATION (default target/bench/analyze-migration.py;
# versions before QEMU 8.0 need its -x output files opened in text mode), its `-x` (one raw
# file per RAM block) runs beside `ram extract`.
#
# Last, a live migration of a booted guest through `cat` and through `vmstate convert - -`
# (tests/interop/filter.py): total time, downtime, and how much later the destination resumes
# after the source completes.
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

log "building vmstate (release) and its decompressor alone (examples/decompress.rs)"
cargo build --release --quiet -p vmstate-cli
cargo build --release --quiet -p vmstate --example decompress
VMSTATE=target/release/vmstate
DECOMPRESS=target/release/examples/decompress

if [ ! -s "$STREAM" ]; then
    command -v qemu-system-x86_64 >/dev/null || need_apt qemu-system-x86
    command -v cpio >/dev/null || need_apt cpio
    log "making $STREAM with $SHARED/tools/make-big-stream.sh (about a minute)"
    WORK="$PWD/$BENCH/work" OUTF="$STREAM" "$SHARED/tools/make-big-stream.sh"
fi
size=$(stat -c %s "$STREAM")

ANALYZE_MIGRATION=${ANALYZE_MIGRATION:-$BENCH/analyze-migration.py}
# The mapped-ram form of the stream, for the rows that read one.
log "writing $BENCH/mapped.mig (mapped-ram)"
$VMSTATE convert --ram-layout mapped-ram "$STREAM" "$BENCH/mapped.mig" >/dev/null

# gzip -1 of the stream, for the rows that read one (made once, like the stream).
if [ ! -s "$STREAM.gz" ] || [ "$STREAM.gz" -ot "$STREAM" ]; then
    log "writing $STREAM.gz (gzip -1)"
    gzip -1 -c "$STREAM" > "$STREAM.gz"
fi

log "warming the page cache"
cat "$STREAM" > /dev/null
cat "$STREAM" > /dev/null
cat "$STREAM.gz" > /dev/null

# name|command (no | in a name); the first is the reference.
benches=(
    "cat|cat $STREAM"
    "dump|$VMSTATE dump $STREAM"
    "dump --json|$VMSTATE dump --json $STREAM"
    "convert --strip-ram|$VMSTATE convert --strip-ram $STREAM $BENCH/stripped.mig"
    "check|$VMSTATE check $STREAM"
    "convert --ram rings|$VMSTATE convert --ram rings $STREAM $BENCH/rings.mig"
    "convert (to /dev/null)|$VMSTATE convert $STREAM /dev/null"
    "dump - (from a pipe)|cat $STREAM | $VMSTATE dump -"
    "cat piped to cat|cat $STREAM | cat"
    "cat piped to a 1 MiB reader (the pipe's floor)|cat $STREAM | python3 scripts/pipe-floor.py"
    "convert - - (a filter: pipe to pipe)|cat $STREAM | $VMSTATE convert - - | cat"
    "convert --to-layout stable - - (filter)|cat $STREAM | $VMSTATE convert --to-layout stable - - | cat"
    "convert --reencode - - (filter)|cat $STREAM | $VMSTATE convert --reencode - - | cat"
    "cat piped through cat (a filter's floor)|cat $STREAM | cat | cat"
    "dump FILE.gz (gzip -1)|$VMSTATE dump $STREAM.gz"
    "dump - (gzip -1, from a pipe)|cat $STREAM.gz | $VMSTATE dump -"
    "decompress FILE.gz (vmstate's decompressor alone)|$DECOMPRESS $STREAM.gz"
    "zcat FILE.gz|zcat $STREAM.gz"
    # Each writes a new file (the old one removed first, in the timing too).
    "cp --reflink=never|rm -f $BENCH/copy.mig && cp --reflink=never $STREAM $BENCH/copy.mig"
    "convert FILE FILE|rm -f $BENCH/conv.mig && $VMSTATE convert $STREAM $BENCH/conv.mig"
    "ram extract (by block)|rm -rf $BENCH/ram && $VMSTATE ram extract $STREAM $BENCH/ram"
    "ram extract --format elf|rm -f $BENCH/ram.elf && $VMSTATE ram extract --format elf $STREAM $BENCH/ram.elf"
    "convert --ram-layout mapped-ram|rm -f $BENCH/m.mig && $VMSTATE convert --ram-layout mapped-ram $STREAM $BENCH/m.mig"
    "convert --ram-layout ordinary (from mapped-ram)|rm -f $BENCH/o.mig && $VMSTATE convert --ram-layout ordinary $BENCH/mapped.mig $BENCH/o.mig"
    "ram extract (mapped-ram, by block)|rm -rf $BENCH/mram && $VMSTATE ram extract $BENCH/mapped.mig $BENCH/mram"
)
if [ -f "$ANALYZE_MIGRATION" ]; then
    am=$(realpath "$ANALYZE_MIGRATION"); abs=$(realpath "$STREAM")
    benches+=("analyze-migration.py -x|rm -rf $BENCH/amx && mkdir $BENCH/amx && cd $BENCH/amx && python3 $am -x -f $abs")
else
    log "no $ANALYZE_MIGRATION: the analyze-migration.py -x row is left out"
fi

results=$(mktemp)
rss=$(mktemp)
trap 'rm -f "$results" "$rss"' EXIT
for run in $(seq "$RUNS"); do
    log "run $run of $RUNS"
    for i in "${!benches[@]}"; do
        cmd=${benches[$i]#*|}
        # Each command starts with nothing left to write back from the one before: what
        # writes a gigabyte otherwise pays for its predecessor's writeback.
        sync
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
# The rows after cp write files: each is also a ratio to cp.
for i in "${!benches[@]}"; do
    [ "${benches[$i]%%|*}" = "cp --reflink=never" ] && cp_row=$i
done
cp_ns=$(awk -v i="$cp_row" '$1 == i { print $2 }' "$results" | median)
printf '%-46s %10s %8s %8s %12s\n' "command" "median s" "x cat" "x cp" "peak RSS MiB"
for i in "${!benches[@]}"; do
    name=${benches[$i]%%|*}
    ns=$(awk -v i="$i" '$1 == i { print $2 }' "$results" | median)
    kib=$(awk -v i="$i" '$1 == i && $3 > m { m = $3 } END { print m }' "$results")
    awk -v n="$name" -v ns="$ns" -v c="$cat_ns" -v p="$cp_ns" -v k="$kib" -v w="$(( i > cp_row ))" \
        'BEGIN { printf "%-46s %10.3f %8.2f %8s %12.1f\n", n, ns / 1e9, ns / c,
                 w ? sprintf("%.2f", ns / p) : "", k / 1024 }'
done
if [ -s "$BENCH/stripped.mig" ]; then
    echo "convert --strip-ram output: $(stat -c %s "$BENCH/stripped.mig") bytes"
fi

# A live migration of a booted guest, QEMU on both sides, through cat and through the filter
# (tests/interop/filter.py; Debian's QEMU 7.2 and the corpus guest): the downtime a filter adds.
if command -v qemu-system-x86_64 >/dev/null && [ -f "$SHARED/corpus/assets/bzImage" ]; then
    log "live migration through convert - - ($RUNS runs of each way)"
    echo
    python3 tests/interop/filter.py --vmstate "$VMSTATE" --work "$BENCH/filter" \
        --results "$BENCH/filter.json" --assets "$SHARED/corpus/assets" --runs "$RUNS" \
        | sed -n '/^qemu  *way/,$p'
else
    log "no qemu-system-x86_64 or no $SHARED/corpus/assets: the live migration rows are left out"
fi
