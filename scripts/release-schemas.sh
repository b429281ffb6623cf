#!/usr/bin/env bash
# release-schemas.sh: what the library knows of each QEMU release for x86, read off Debian's
# real binaries.
#   crates/vmstate/schemas/qemuX.Y-FAMILY-M.json.gz  -dump-vmstate of release X.Y running
#       machine FAMILY-M (pc-q35, pc-i440fx), for every M of the bundled releases that X.Y
#       has (its own and the older ones): what `compat --to X.Y` compares with;
#   crates/vmstate/src/compat/machines.tsv  every machine type each release has (-machine
#       help), with its aliases and default;
#   crates/vmstate/src/compat/releases.tsv  the device-class signatures
#       (scripts/release-signatures.py).
# Each release is Debian's build, unpacked with ../shared/tools/qemu-tree.sh into
# target/qemu-trees/VERSION with a private apt state (nothing is installed); 7.2 is Debian
# 12's own when it is installed. Dumps already there are kept (FORCE=1 makes them again).
#
# usage: scripts/release-schemas.sh    (the releases below; about 2 minutes with the downloads)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
OUT=crates/vmstate/schemas
MACHINES=crates/vmstate/src/compat/machines.tsv
TREES=$PWD/target/qemu-trees
RELEASES=(5.2:bullseye 7.2:bookworm 10.0:trixie 11.1:trixie-backports)
mkdir -p "$OUT" "$TREES"

qemu_of() { # VERSION SUITE -> the qemu-system-x86_64 to run
    local version=$1 suite=$2 tree=$TREES/$1
    if [ "$version" = 7.2 ] && qemu-system-x86_64 --version 2>/dev/null | grep -q 'version 7\.2'; then
        echo qemu-system-x86_64
        return
    fi
    [ -x "$tree/qemu-system-x86_64" ] ||
        APTX=$TREES/aptx-$suite TARGETS=x86_64 bash "$SHARED/tools/qemu-tree.sh" "$version" "$suite" "$tree" >&2
    echo "$tree/qemu-system-x86_64"
}

versions=()
for spec in "${RELEASES[@]}"; do versions+=("${spec%%:*}"); done
{
    echo "# Machine types of each QEMU release for x86 (-machine help of Debian's build), written by"
    echo "# scripts/release-schemas.sh: \`release machine what\`, what is default, alias-of:NAME or -."
    for spec in "${RELEASES[@]}"; do
        version=${spec%%:*} suite=${spec#*:}
        qemu=$(qemu_of "$version" "$suite")
        "$qemu" -machine help 2>/dev/null | awk -v r="$version" 'NR > 1 && ($1 ~ /^(pc|q35|microvm)/) {
            what = "-"
            if (match($0, /\(alias of [^)]*\)/)) what = "alias-of:" substr($0, RSTART + 10, RLENGTH - 11)
            else if ($0 ~ /\(default\)/) what = "default"
            print r "\t" $1 "\t" what }'
        for family in pc-q35 pc-i440fx; do
            for machine in "${versions[@]}"; do
                file="$OUT/qemu$version-$family-$machine.json.gz"
                "$qemu" -machine help 2>/dev/null | grep -q "^$family-$machine " || continue
                [ -s "$file" ] && [ -z "${FORCE:-}" ] && continue
                tmp=$(mktemp)
                "$qemu" -machine "$family-$machine" -nodefaults -display none -dump-vmstate "$tmp" 2>/dev/null
                gzip -9 -n -c "$tmp" > "$file"
                rm -f "$tmp"
                echo "release-schemas: $file" >&2
            done
        done
    done
} > "$MACHINES.new"
mv "$MACHINES.new" "$MACHINES"
python3 scripts/release-signatures.py
echo "release-schemas: $MACHINES and crates/vmstate/src/compat/releases.tsv written" >&2
