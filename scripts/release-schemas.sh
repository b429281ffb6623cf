#!/usr/bin/env bash
# release-schemas.sh: the -dump-vmstate output of QEMU releases for x86 (q35 and pc at each
# release's own machine type), gzipped into tests/fixtures/schemas/, then releases.tsv
# written again from them (scripts/release-signatures.py).
#
# Each release is Debian's build, unpacked with ../shared/tools/qemu-tree.sh into
# target/qemu-trees/VERSION with a private apt state (nothing is installed); Debian 12's own
# 7.2 is used as installed.
#
# usage: scripts/release-schemas.sh [VERSION:SUITE ...]
#        (default: 5.2:bullseye 10.0:trixie 11.1:trixie-backports)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
OUT=tests/fixtures/schemas
TREES=$PWD/target/qemu-trees
mkdir -p "$OUT" "$TREES"
[ $# -gt 0 ] || set -- 5.2:bullseye 10.0:trixie 11.1:trixie-backports

dump() { # QEMU-COMMAND VERSION MACHINE-FAMILY
    local qemu=$1 version=$2 family=$3 tmp
    tmp=$(mktemp)
    "$qemu" -machine "$family-$version" -nodefaults -display none -dump-vmstate "$tmp" 2>/dev/null
    gzip -9 -n -c "$tmp" > "$OUT/qemu$version-$family-$version.json.gz"
    rm -f "$tmp"
    echo "release-schemas: $OUT/qemu$version-$family-$version.json.gz"
}

for spec in "$@"; do
    version=${spec%%:*} suite=${spec#*:}
    tree=$TREES/$version
    [ -x "$tree/qemu-system-x86_64" ] ||
        APTX=$TREES/aptx-$suite TARGETS=x86_64 bash "$SHARED/tools/qemu-tree.sh" "$version" "$suite" "$tree"
    for family in pc-q35 pc-i440fx; do
        dump "$tree/qemu-system-x86_64" "$version" "$family"
    done
done
python3 scripts/release-signatures.py
echo "release-schemas: crates/vmstate/src/compat/releases.tsv written"
