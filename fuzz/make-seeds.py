#!/usr/bin/env python3
"""Writes the seed corpora of the stream-level fuzz targets from the real streams under
tests/fixtures/ (run from fuzz/, with the vmstate CLI built: cargo build -p vmstate-cli).

container:   two whole stripped streams (device state, no pages).
ram:         the RAM section payloads of the `rings` streams (page size byte 3 = 4096).
description: the JSON descriptions of the stripped streams, cut to the sections the target
             keeps (those under 2 KiB).
check:       each `rings` stream unpatched, and with a patch of its device field.
structured:  each `rings` stream and device, unedited and with boundary values set.
"""
import gzip
import json
import os
import re
import struct
import subprocess

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
CLI = os.path.join(ROOT, "target", "debug", "vmstate")
RINGS = ["blk-inflight-split", "blk-inflight-mq2", "blk-inflight-packed", "scsi-inflight",
         "serial-throttled"]


def load(path):
    with gzip.open(path) as f:
        return f.read()


def dump(path):
    return subprocess.run([CLI, "dump", path], check=True, capture_output=True,
                          text=True).stdout


def put(target, name, data):
    d = os.path.join(ROOT, "fuzz", "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


for name in ["serial-throttled", "blk-inflight-packed"]:
    put("container", f"{name}.stripped", load(f"{FIX}/stripped/qemu7.2-{name}.stripped.mig.gz"))

for name in RINGS:
    path = f"{FIX}/rings/qemu7.2-{name}.rings.mig.gz"
    data = load(path)
    text = dump(path)
    start = re.search(r"START\s+\d+\s+ram\s+\d+\s+\d+\s+(\d+)\.\.", text)
    first_full = re.search(r"FULL\s+\d+\s+\S+\s+\d+\s+\d+\s+(\d+)\.\.", text)
    at = int(start.group(1)) + 1 + 4 + 1 + 3 + 4 + 4
    put("ram", f"{name}.ram", bytes([3]) + data[at:int(first_full.group(1))] + b"\0")

for name in RINGS:
    path = f"{FIX}/stripped/qemu7.2-{name}.stripped.mig.gz"
    data = load(path)
    text = dump(path)
    at = int(re.search(r"description: at (\d+)", text).group(1))
    small = set()
    for m in re.finditer(r"FULL\s+\d+\s+(\S+)\s+(\d+)\s+\d+\s+(\d+)\.\.(\d+)", text):
        if int(m.group(4)) - int(m.group(3)) < 2048:
            small.add((m.group(1), int(m.group(2))))
    desc = json.loads(data[at + 5:])
    desc["devices"] = [d for d in desc["devices"] if (d["name"], d["instance_id"]) in small]
    put("description", f"{name}.json", json.dumps(desc, separators=(",", ":")).encode())

BOUNDARY = 1  # odd value byte: the value is a boundary value, chosen by the 64-bit word
for k, name in enumerate(RINGS):
    put("check", f"{name}", bytes([k]))
    put("check", f"{name}.patched", bytes([k, 0]) + struct.pack("<I", 700) + bytes([1, 0xff, 0xff]))
    put("structured", f"{name}", bytes([k, 0]))
    for what, value in [(5, 6), (7, 4), (11, 4), (2, 3), (27, 5)]:
        op = bytes([what, 0, 0, BOUNDARY]) + struct.pack("<Q", value)
        put("structured", f"{name}.op{what}", bytes([k, 0]) + op)
