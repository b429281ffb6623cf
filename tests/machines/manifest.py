#!/usr/bin/env python3
"""MANIFEST.md of the machine corpus: one row per stream in OUT, then per-stream details.

usage: manifest.py OUT > OUT/MANIFEST.md

Reads what make-machine-corpus.sh left beside each stream: NAME.info, .truth.json,
.sections.json (the stream's own JSON description: section idstrs), .cmdline,
.load-status, .notes; and NAME.skipped for a scenario the QEMU could not run (its message).  A device's vmstate section is matched to its QOM path through
`info qtree` (saved in the truth): the qdev id gives the transport's address (PCI
slot.function, virtio-mmio base address, CCW dev_id), which is how QEMU builds the
section idstr ("0000:00:02.0/virtio-blk", "virtio-mmio@000000000a003e00/virtio-blk",
"/fe.0.0000/virtio-blk").
"""
import glob
import json
import os
import re
import sys


def qtree_nodes(text):
    """flat list of dev nodes: {type, id, props, parent (index) }"""
    nodes, stack = [], []   # stack of (indent, node index)
    for line in text.replace("\r", "").splitlines():
        ind = len(line) - len(line.lstrip())
        m = re.match(r'\s*dev: ([^,]+), id "([^"]*)"', line)
        if m:
            while stack and stack[-1][0] >= ind:
                stack.pop()
            nodes.append({"type": m.group(1), "id": m.group(2), "props": {},
                          "parent": stack[-1][1] if stack else None, "lines": []})
            stack.append((ind, len(nodes) - 1))
            continue
        if stack and ind > stack[-1][0]:
            n = nodes[stack[-1][1]]
            n["lines"].append(line.strip())
            pm = re.match(r'\s*([\w-]+) = (.*)', line)
            if pm and not line.strip().startswith("bus:"):
                n["props"].setdefault(pm.group(1), pm.group(2).strip('"'))
    return nodes


def transport_prefix(nodes, qid):
    """idstr prefix of the virtio device whose proxy (or itself) has qdev id qid"""
    for n in nodes:
        if n["id"] != qid:
            continue
        t = n["type"]
        if t.endswith("-ccw"):
            return "/" + n["props"].get("dev_id", "?")
        if "addr" in n["props"] and re.match(r"[0-9a-f]{2}\.[0-9a-f]$", n["props"]["addr"]):
            return "%s/" % n["props"]["addr"]          # PCI: match on slot.fn
        # virtio-*-device on a virtio-mmio transport: parent chain -> virtio-mmio node
        p = n["parent"]
        while p is not None:
            if nodes[p]["type"] == "virtio-mmio":
                for ln in nodes[p]["lines"]:
                    m = re.match(r"mmio ([0-9a-f]+)/", ln)
                    if m:
                        return "virtio-mmio@%s" % m.group(1)
            p = nodes[p]["parent"]
    return None


def device_rows(truth, sections):
    nodes = qtree_nodes(truth.get("hmp-info-qtree", "") if isinstance(truth.get("hmp-info-qtree"), str) else "")
    rows = []
    idstrs = [s["idstr"] for s in sections]
    for d in truth.get("devices", []):
        m = re.match(r"/machine/peripheral/([^/]+)", d["path"])
        pre = transport_prefix(nodes, m.group(1)) if m else None
        sec = "?"
        if pre:
            if pre.endswith("/") and re.match(r"[0-9a-f]{2}\.[0-9a-f]/$", pre):
                # "<root bus path>:<slot>.<fn>/...": 0000:00 (PCIe, GPEX), pci@800000020000000
                # (sPAPR PHB), pci.2 (mac99's uni-north: no root bus path, the bus name)
                cand = [i for i in idstrs if re.match(r"[^/]*:%s" % re.escape(pre), i)]
            else:
                cand = [i for i in idstrs if i.startswith(pre + "/")]
            # the virtio device's own section, not a child's (scsi-disk, ...)
            cand = [c for c in cand if c.count("/") == min(x.count("/") for x in cand)] if cand else []
            sec = ", ".join(cand) if cand else "? (%s)" % pre
        inuse = {x["queue"]: x["queue-status"].get("inuse", 0) for x in d.get("queues", [])}
        held = {q: n for q, n in inuse.items() if n}
        st = d.get("status", {})
        rows.append({"path": d["path"], "name": d["name"], "idstr": sec, "queues": len(inuse),
                     "held": held, "status": st.get("status", {}).get("statuses", []),
                     "broken": st.get("broken")})
    return rows


def main():
    out = sys.argv[1]
    names = sorted(os.path.basename(f)[:-4] for f in glob.glob(os.path.join(out, "*.mig")))
    skipped = sorted(glob.glob(os.path.join(out, "*.skipped")))
    # the QEMU version is the files' prefix (qemu7.2-..., qemu10.0-...)
    vers = sorted({m.group(1) for m in (re.match(r"qemu([0-9.]+)-", os.path.basename(f))
                                        for f in names + skipped) if m}) or ["7.2"]
    origin = "Debian 12's QEMU" if vers == ["7.2"] else "QEMU %s (%s)" % (
        "/".join(vers), "bookworm-backports" if "7.2" not in vers else "Debian 12, bookworm-backports")
    print("# Machine corpus: QEMU %s migration streams beyond x86 pc/q35\n" % "/".join(vers))
    print("Made by `tests/machines/make-machine-corpus.sh` with " + origin + "; ground truth "
          "(`x-query-virtio*` over QMP) read just before each save, in `NAME.truth.json`. "
          "In-flight counts are the `inuse` of each queue (queue index: count). "
          "Load = a fresh QEMU with the same devices (plain disk for the in-flight ones) "
          "started with `-incoming \"exec:cat FILE\"`.\n")
    print("| file | bytes | machine | transport | scenario | virtio devices | in flight | load |")
    print("| --- | ---: | --- | --- | --- | --- | --- | --- |")
    details = []
    for n in names:
        base = os.path.join(out, n)
        try:
            machine, transport, scen, kind, binary = open(base + ".info").read().split()
        except (OSError, ValueError):
            machine = transport = scen = kind = binary = "?"
        truth = json.load(open(base + ".truth.json")) if os.path.exists(base + ".truth.json") else {}
        secs = json.load(open(base + ".sections.json")).get("sections", []) if os.path.exists(base + ".sections.json") else []
        rows = device_rows(truth, secs)
        load = open(base + ".load-status").read().strip() if os.path.exists(base + ".load-status") else "?"
        held = "; ".join("%s %s" % (r["path"].split("/")[3] if r["path"].count("/") >= 3 else r["path"],
                                   ", ".join("q%d: %d" % kv for kv in sorted(r["held"].items())))
                         for r in rows if r["held"]) or "none"
        devs = ", ".join(r["name"] for r in rows)
        print("| `%s.mig` | %d | %s | %s | %s | %s | %s | %s |" % (
            n, os.path.getsize(base + ".mig"), machine, transport, scen, devs, held,
            load.replace("|", "/")))
        d = ["## %s.mig\n" % n]
        d.append("- %s `%s`, %s, run state at save: %s" % (
            binary, machine, kind, truth.get("query-status", {}).get("status", "?")))
        if os.path.exists(base + ".cmdline"):
            d.append("- command line: `%s`" % open(base + ".cmdline").read().strip())
        d.append("- load: %s" % load)
        if os.path.exists(base + ".notes"):
            ref = [l.strip() for l in open(base + ".notes") if l.startswith("REFUSED")]
            if ref:
                d.append("- refused by QEMU (left out):")
                d += ["  - `%s`" % r for r in ref]
        d.append("\n| QOM path (x-query-virtio) | device | section idstr | queues | in flight | status |")
        d.append("| --- | --- | --- | ---: | --- | --- |")
        for r in rows:
            d.append("| `%s` | %s | `%s` | %d | %s | %s |" % (
                r["path"], r["name"], r["idstr"], r["queues"],
                ", ".join("q%d: %d" % kv for kv in sorted(r["held"].items())) or "0",
                (" ".join(s.split(":")[0].replace("VIRTIO_CONFIG_S_", "") for s in r["status"]) or "0")
                + (" **broken**" if r["broken"] else "")))
        d.append("\nsections in stream order: " + ", ".join(
            "`%s`%s" % (s["idstr"], "" if not s.get("instance_id") else "#%d" % s["instance_id"]) for s in secs))
        details.append("\n".join(d) + "\n")
    if skipped:
        print("\nNot made (the QEMU could not run them; its message):\n")
        for f in skipped:
            print("- `%s`: %s" % (os.path.basename(f)[:-len(".skipped")],
                                  open(f).read().strip().replace("|", "/")))
    print("\n" + "\n".join(details))


if __name__ == "__main__":
    main()
