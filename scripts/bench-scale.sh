#!/usr/bin/env bash
# bench-scale.sh: vmstate on a real ~1 GiB QEMU migration stream, against reading the file.
#
# Builds vmstate (release), makes the stream with ../shared/tools/make-big-stream.sh unless it
# is cached under target/bench/ (QEMU and cpio are installed with apt-get when missing).
#
# First, `check` and `convert FILE OUT` beside `cat FILE > /dev/null` and `cp --reflink=never`
# in one run: with the page cache warm (as a writer leaves it, and as read back from disk)
# and cold (dropped before each command; as root only), writing to tmpfs (CACHE_TMPFS,
# default /dev/shm, where the CPU cost shows) and to disk (target/bench/); medians and
# minimums, each with its ratio to its reference row.
#
# Then it warms the page cache and runs, alternating and RUNS times each, `cat FILE > /dev/null` and each
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
# usage: scripts/bench-scale.sh
# env:   RUNS=5  STREAM=path (use this stream instead)  VMSTATE=path (time that binary)
#        TABLES=cache (only the first tables: check and convert beside cat and cp)
#        TABLES=main (only the table of every command, without the live migration)
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
VMSTATE=${VMSTATE:-target/release/vmstate}
DECOMPRESS=target/release/examples/decompress

if [ ! -s "$STREAM" ]; then
    command -v qemu-system-x86_64 >/dev/null || need_apt qemu-system-x86
    command -v cpio >/dev/null || need_apt cpio
    log "making $STREAM with $SHARED/tools/make-big-stream.sh (about a minute)"
    WORK="$PWD/$BENCH/work" OUTF="$STREAM" "$SHARED/tools/make-big-stream.sh"
fi
size=$(stat -c %s "$STREAM")

results=$(mktemp)
rss=$(mktemp)
tcopy=${CACHE_TMPFS:-/dev/shm}/vmstate-bench-copy.mig tconv=${CACHE_TMPFS:-/dev/shm}/vmstate-bench-conv.mig
trap 'rm -f "$results" "$rss" "$tcopy" "$tconv"' EXIT
machine() {
    echo "stream: $STREAM, $size bytes ($(( size >> 20 )) MiB)"
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); $(uname -sr); load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

# time_rows ARRAY OUT [PREP]: runs the commands of ARRAY ("name|command" rows) alternating,
# RUNS times each, after a sync and PREP (neither timed), appending "index nanoseconds
# peak-KiB" lines to OUT.
time_rows() {
    local -n rows=$1
    local out=$2 prep=${3:-true} run i cmd start end
    for run in $(seq "$RUNS"); do
        log "$1: run $run of $RUNS"
        for i in "${!rows[@]}"; do
            cmd=${rows[$i]#*|}
            # Each command starts with nothing left to write back from the one before: what
            # writes a gigabyte otherwise pays for its predecessor's writeback.
            sync
            eval "$prep"
            start=$(date +%s%N)
            /usr/bin/time -f %M -o "$rss" bash -c "$cmd > /dev/null"
            end=$(date +%s%N)
            # For a pipe, GNU time reports the largest of the shell's children.
            echo "$i $(( end - start )) $(tail -n 1 "$rss")" >> "$out"
        done
    done
}

# check and convert beside cat and cp in one run, with the page cache warm (the stream read
# just before each command) and cold (dropped before each command, which takes root), writing
# to tmpfs (where the CPU cost shows) and to disk (where writeback spreads it). Each row's
# ratio is to the reference row above it, of the same run: of medians, and of minimums, since
# other work on the machine spreads the times.
cache_table() {
    local title=$1 prep=$2 out
    out=$(mktemp)
    time_rows cache_rows "$out" "$prep"
    echo
    machine
    echo "$title ($RUNS runs each, alternating)"
    printf '%-40s %9s %9s %12s %10s %12s\n' "command" "median s" "min s" "x (median)" "x (min)" \
        "peak RSS MiB"
    local i ref name
    for i in "${!cache_rows[@]}"; do
        ref=${cache_refs[$i]}
        name=${cache_rows[$i]%%|*}
        awk -v i="$i" -v r="$ref" -v n="$name" '
            $1 == i { t[++k] = $2; if ($3 > m) m = $3 }
            $1 == r { u[++l] = $2 }
            function med(a, c,   j, x, y) {
                for (x = 1; x <= c; x++) for (y = x + 1; y <= c; y++)
                    if (a[y] < a[x]) { j = a[x]; a[x] = a[y]; a[y] = j }
                return (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
            }
            END {
                mt = med(t, k); mu = med(u, l)
                printf "%-40s %9.3f %9.3f %12.2f %10.2f %12.1f\n", n, mt / 1e9, t[1] / 1e9,
                       mt / mu, t[1] / u[1], m / 1024
            }' "$out"
    done
    rm -f "$out"
}
if [ "${TABLES:-all}" != main ]; then
# cache_rows_of FILE: the rows, on FILE.
cache_rows_of() {
    cache_rows=(
        "cat FILE > /dev/null|cat $1"
        "vmstate check FILE|$VMSTATE check $1"
        "cp --reflink=never FILE (to tmpfs)|rm -f $tcopy && cp --reflink=never $1 $tcopy"
        "vmstate convert FILE OUT (to tmpfs)|rm -f $tconv && $VMSTATE convert $1 $tconv"
        "cp --reflink=never FILE (to disk)|rm -f $BENCH/copy.mig && cp --reflink=never $1 $BENCH/copy.mig"
        "vmstate convert FILE OUT (to disk)|rm -f $BENCH/conv.mig && $VMSTATE convert $1 $BENCH/conv.mig"
    )
}
# The row each is measured against: check against cat, convert against cp to the same place.
cache_refs=(0 0 2 2 4 4)
# Warm, the page cache as a file's writer leaves it (a stream QEMU has just saved): a copy
# written through a pipe, as QEMU's `exec:cat > FILE` writes. The kernel keeps what it reads
# from disk in larger pieces than what was written in small writes, and a mapping of those
# takes fewer page faults: the same stream read back from disk is another warm state.
fresh=$BENCH/written.mig
trap 'rm -f "$results" "$rss" "$tcopy" "$tconv" "$fresh"' EXIT
log "writing $fresh (the stream through a pipe)"
cat "$STREAM" | cat > "$fresh"
cache_rows_of "$fresh"
cache_table "warm, as written: a copy of the stream just written through a pipe" \
    "cat $fresh > /dev/null"
rm -f "$fresh"
cache_rows_of "$STREAM"
if ( echo 3 > /proc/sys/vm/drop_caches ) 2>/dev/null; then
    cache_table "cold: the page cache dropped before each command" \
        "echo 3 > /proc/sys/vm/drop_caches"
    cache_table "warm, as read from disk: the stream read back after the page cache was dropped" \
        "cat $STREAM > /dev/null"
else
    log "cannot write /proc/sys/vm/drop_caches (not root): the cold rows are left out"
    cache_table "warm: the stream in the page cache" "cat $STREAM > /dev/null"
fi
rm -f "$tcopy" "$tconv"
fi
[ "${TABLES:-all}" = cache ] && exit 0

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

time_rows benches "$results"

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

cat_ns=$(awk '$1 == 0 { print $2 }' "$results" | median)
echo
machine
echo "$RUNS runs each, alternating"
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
if [ "${TABLES:-all}" = main ]; then
    log "TABLES=main: the live migration rows are left out"
elif command -v qemu-system-x86_64 >/dev/null && [ -f "$SHARED/corpus/assets/bzImage" ]; then
    log "live migration through convert - - ($RUNS runs of each way)"
    echo
    python3 tests/interop/filter.py --vmstate "$VMSTATE" --work "$BENCH/filter" \
        --results "$BENCH/filter.json" --assets "$SHARED/corpus/assets" --runs "$RUNS" \
        | sed -n '/^qemu  *way/,$p'
else
    log "no qemu-system-x86_64 or no $SHARED/corpus/assets: the live migration rows are left out"
fi
