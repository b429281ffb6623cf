#!/usr/bin/env python3
"""Writes crates/vmstate/src/compat/releases.tsv: the device classes of each QEMU release's
`-dump-vmstate` output and their version_id, by which `vmstate compat` tells a dump's
release.

usage: release-signatures.py [DUMP ...]   (default: crates/vmstate/schemas/qemu*-pc-q35-X.Y.json.gz,
                                           each release's dump at its own q35 machine type)

A dump's release is read from its file name (qemuX.Y-...). Prints nothing; exits 2 when a
dump cannot be read.
"""
import glob
import gzip
import json
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "crates/vmstate/src/compat/releases.tsv")


def own_machine_dumps():
    """Each release's dump at its own q35 machine type."""
    out = []
    for path in glob.glob(os.path.join(ROOT, "crates/vmstate/schemas/qemu*-pc-q35-*.json.gz")):
        m = re.match(r"qemu(\d+\.\d+)-pc-q35-(\d+\.\d+)\.json\.gz$", os.path.basename(path))
        if m and m.group(1) == m.group(2):
            out.append(path)
    return out


def release_of(path):
    m = re.match(r"qemu(\d+)\.(\d+)", os.path.basename(path))
    if not m:
        sys.exit("release-signatures: %s: no release in the name (qemuX.Y-...)" % path)
    return int(m.group(1)), int(m.group(2))


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print("release-signatures: %s: %s" % (path, e), file=sys.stderr)
        sys.exit(2)


def main():
    dumps = sys.argv[1:] or own_machine_dumps()
    rows, versions = [], []
    for path in sorted(dumps, key=release_of):
        release = "%d.%d" % release_of(path)
        dump = load(path)
        versions.append(release)
        for cls in sorted(k for k in dump if k != "vmschkmachine"):
            rows.append("%s\t%s\t%d" % (release, cls, dump[cls]["version_id"]))
    with open(OUT, "w") as f:
        f.write("# Device classes and their version_id in the -dump-vmstate output of each QEMU release this\n")
        f.write("# knows, for telling a dump's release from its contents: `release class version_id`.\n")
        f.write("# Written by scripts/release-signatures.py from each release's dump at its own q35 machine\n")
        f.write("# type (crates/vmstate/schemas/): QEMU %s.\n" % ", ".join(versions))
        f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
