#!/usr/bin/env python3
"""Compact ground truth of a machine-corpus stream's virtio-blk requests in flight.

usage: inflight-truth.py NAME.truth.json > NAME.inflight.json

Reads the ground truth make-machine-corpus.sh read over QMP before the save and prints, for
the stream's virtio-blk device, every queue's state and every request in flight as the
descriptors in guest memory describe it:

  {"queues": [{"queue", "num", "desc", "avail", "used", "last_avail_idx", "inuse"}],
   "requests": [{"queue", "index", "out": [[addr, len]...], "in": [[addr, len]...]}]}

Split rings: QEMU's x-query-virtio-queue-element lists a chain's descriptors last first,
so they are put back in chain order. Packed rings: the chain read from ring memory by the
corpus script (indirect tables expanded), device-writable descriptors by their WRITE flag.
"""
import json
import sys

PACKED_WRITE = 0x2


def split_request(queue, element):
    descs = list(reversed(element["descs"]))
    return {
        "queue": queue,
        "index": element["index"],
        "out": [[d["addr"], d["len"]] for d in descs if "write" not in d["flags"]],
        "in": [[d["addr"], d["len"]] for d in descs if "write" in d["flags"]],
    }


def packed_request(queue, entry):
    descs = []
    for d in entry["element-from-ring-memory"]:
        descs.extend(d.get("indirect") or [d])
    return {
        "queue": queue,
        "index": entry["buffer-id"],
        "out": [[d["addr"], d["len"]] for d in descs if not d["flags"] & PACKED_WRITE],
        "in": [[d["addr"], d["len"]] for d in descs if d["flags"] & PACKED_WRITE],
    }


def main(path):
    truth = json.load(open(path))
    blk = [d for d in truth["devices"] if d["name"] == "virtio-blk"]
    if len(blk) != 1:
        sys.exit(f"{path}: {len(blk)} virtio-blk devices, want 1")
    queues, requests = [], []
    for q in blk[0]["queues"]:
        status = q["queue-status"]
        index = status["queue-index"]
        queues.append({
            "queue": index,
            "num": status["vring-num"],
            "desc": status["vring-desc"],
            "avail": status["vring-avail"],
            "used": status["vring-used"],
            "last_avail_idx": status["last-avail-idx"],
            "inuse": status["inuse"],
        })
        for entry in q.get("inflight", []):
            if "element" in entry:
                requests.append(split_request(index, entry["element"]))
            else:
                requests.append(packed_request(index, entry))
    json.dump({"queues": queues, "requests": requests}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
