#!/usr/bin/env python3
"""Small QMP client for make-machine-corpus.sh (standard library only).

usage:
  qmp.py SOCKET STEP [STEP ...]   run steps against one QEMU's QMP unix socket
  qmp.py sections STREAM          the stream's own JSON description (the vmdesc
                                  QEMU appends after the last section): section
                                  idstrs, instance ids, versions, as JSON
  qmp.py inflight TRUTH.json      in-flight counts per device/queue, as JSON

STEPs (all bounded in time; any QMP error or timeout exits non-zero):
  {"execute": ...}              raw command, result printed as JSON
  hmp:LINE                      human-monitor-command, text printed
  sleep:SECONDS
  status                        print the run state
  wait-status:A|B[,TIMEOUT]     poll query-status until it is one of A, B
  wait-load[,TIMEOUT]           destination: wait until the state leaves
                                inmigrate; prints "loaded: STATE" (exit 3 when
                                QEMU went away during the load)
  wait-serial:FILE:TEXT[,TIMEOUT]  wait until FILE contains TEXT (fails early
                                when QEMU's socket closes)
  migrate:URI[,TIMEOUT]         migrate, poll query-migrate until it ends
  truth:FILE                    virtio ground truth (x-query-virtio*) as JSON
  quit                          quit QEMU (QEMU exits)

The in-flight elements of a queue are taken as the `inuse` elements the device
popped last: split ring, avail ring positions [last-avail-idx - inuse,
last-avail-idx); packed ring, the descriptor chains from used-idx on, walked
through the descriptor ring's F_NEXT flags.  That holds when the device
completed everything it popped before them in order (true for the corpus'
scenarios: one read, then writes that all fail).  The raw ring memory of
every queue with elements in flight is saved too, to check that against.
"""
import json
import os
import socket
import sys
import time

VIRTQ_DESC_F_NEXT = 1


class QMPError(RuntimeError):
    pass


class QMP:
    def __init__(self, path, timeout=30):
        refused = 0
        deadline = time.time() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError as err:
                self.sock.close()
                # refused: the socket file is there but nobody listens (QEMU exited)
                if isinstance(err, ConnectionRefusedError):
                    refused += 1
                    if refused > 20:
                        raise
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.settimeout(180)
        self.buf = b""
        self.events = []
        hello = self._read()
        self.version = hello["QMP"]["version"]
        self.cmd("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError("QMP connection closed by QEMU")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, msg):
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
            elif "error" in r:
                raise QMPError("%s: %s: %s" % (msg.get("execute"), r["error"].get("class"),
                                               r["error"].get("desc")))
            else:
                return r.get("return")

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        return self.send(msg)

    def hmp(self, line):
        return self.cmd("human-monitor-command", **{"command-line": line})

    def status(self):
        return self.cmd("query-status")["status"]


# ------------------------------------------------------------------ ground truth
def guest_mem(q, addr, size, scratch):
    """guest-physical memory, read with pmemsave into a scratch file"""
    q.cmd("pmemsave", val=addr, size=size, filename=scratch)
    try:
        with open(scratch, "rb") as f:
            return f.read()
    finally:
        os.unlink(scratch)


def le(b, off, n):
    return int.from_bytes(b[off:off + n], "little")


VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4


def packed_desc(b, off):
    """one packed-ring descriptor: le64 addr, le32 len, le16 id, le16 flags"""
    fl = le(b, off + 14, 2)
    names = [n for bit, n in ((1, "next"), (2, "write"), (4, "indirect"), (1 << 7, "avail"),
                              (1 << 15, "used")) if fl & bit]
    return {"addr": le(b, off, 8), "len": le(b, off + 8, 4), "id": le(b, off + 12, 2),
            "flags": fl, "flag-names": names}


def packed_chain(q, descs, head, n, num, scratch):
    """the descriptors of one packed-ring element, indirect tables followed"""
    out = []
    for k in range(n):
        d = packed_desc(descs, 16 * ((head + k) % num))
        if d["flags"] & VIRTQ_DESC_F_INDIRECT and 0 < d["len"] <= 16 * 1024:
            tbl = guest_mem(q, d["addr"], d["len"], scratch)
            d["indirect"] = [packed_desc(tbl, 16 * i) for i in range(d["len"] // 16)]
        out.append(d)
    return out


def queue_truth(q, path, qi, st, packed, scratch):
    ent = {"queue": qi, "queue-status": st, "inflight": []}
    inuse = st.get("inuse", 0)
    num = st.get("vring-num", 0)
    if not inuse or not num or not st.get("vring-desc"):
        return ent
    descs = guest_mem(q, st["vring-desc"], 16 * num, scratch)
    ent["ring-memory"] = {"desc-addr": st["vring-desc"], "desc": descs.hex()}
    if packed:
        ent["ring-memory"]["driver-event"] = guest_mem(q, st["vring-avail"], 4, scratch).hex()
        ent["ring-memory"]["device-event"] = guest_mem(q, st["vring-used"], 4, scratch).hex()
        ent["method"] = "packed: descriptor chains from used-idx on"
        pos = st.get("used-idx", 0) % num
        for _ in range(inuse):
            head = pos
            n = 1
            while le(descs, 16 * pos + 14, 2) & VIRTQ_DESC_F_NEXT and n <= num:
                pos = (pos + 1) % num
                n += 1
            pos = (pos + 1) % num
            e = {"desc-index": head, "ring-slots": n,
                 "buffer-id": le(descs, 16 * ((head + n - 1) % num) + 12, 2)}
            try:
                e["element"] = q.cmd("x-query-virtio-queue-element", path=path, queue=qi, index=head)
            except QMPError as err:
                # QEMU 7.2: "Packed ring not supported"; decode the chain from guest memory
                e["error"] = str(err)
                e["element-from-ring-memory"] = packed_chain(q, descs, head, n, num, scratch)
            ent["inflight"].append(e)
    else:
        avail = guest_mem(q, st["vring-avail"], 4 + 2 * num + 2, scratch)
        used = guest_mem(q, st["vring-used"], 4 + 8 * num + 2, scratch)
        ent["ring-memory"]["avail-addr"] = st["vring-avail"]
        ent["ring-memory"]["avail"] = avail.hex()
        ent["ring-memory"]["used-addr"] = st["vring-used"]
        ent["ring-memory"]["used"] = used.hex()
        ent["method"] = "split: avail positions [last-avail-idx - inuse, last-avail-idx)"
        lai = st.get("last-avail-idx", 0)
        for k in range(inuse):
            idx = (lai - inuse + k) & 0xffff
            head = le(avail, 4 + 2 * (idx % num), 2)
            e = {"avail-index": idx, "head": head}
            try:
                e["element"] = q.cmd("x-query-virtio-queue-element", path=path, queue=qi, index=idx)
            except QMPError as err:
                e["error"] = str(err)
            ent["inflight"].append(e)
        heads = [e["head"] for e in ent["inflight"]]
        # cross-checks: a head cannot be in flight twice; the guest's avail idx has reached
        # last-avail-idx; used idx in memory = last-avail-idx - inuse (all else completed)
        aidx, uidx = le(avail, 2, 2), le(used, 2, 2)
        ent["check"] = {"distinct-heads": len(set(heads)) == len(heads),
                        "avail-idx-in-memory": aidx, "used-idx-in-memory": uidx,
                        "used-idx-is-last-avail-minus-inuse": uidx == (lai - inuse) & 0xffff}
    return ent


def virtio_truth(q, scratch):
    t = {"qemu-version": q.version, "query-status": q.cmd("query-status")}
    try:
        devs = q.cmd("x-query-virtio")
    except QMPError as err:
        t["error"] = str(err)
        return t
    t["devices"] = []
    for d in devs:
        ent = {"path": d["path"], "name": d["name"]}
        t["devices"].append(ent)
        try:
            st = q.cmd("x-query-virtio-status", path=d["path"])
        except QMPError as err:
            ent["status-error"] = str(err)
            continue
        ent["status"] = st
        feats = st.get("guest-features", {}).get("transports", [])
        packed = any("RING_PACKED" in f for f in feats)
        ent["packed-ring"] = packed
        ent["queues"] = []
        misses = 0
        for qi in range(1024):      # VIRTIO_QUEUE_MAX
            try:
                qs = q.cmd("x-query-virtio-queue-status", path=d["path"], queue=qi)
            except QMPError:
                misses += 1
                if misses >= 16:
                    break
                continue
            misses = 0
            ent["queues"].append(queue_truth(q, d["path"], qi, qs, packed, scratch))
    for name, fn in (("hmp-info-virtio", lambda: q.hmp("info virtio")),
                     ("query-block", lambda: [{k: b.get(k) for k in ("device", "qdev", "io-status")}
                                              for b in q.cmd("query-block")]),
                     ("hmp-info-qtree", lambda: q.hmp("info qtree"))):
        try:
            t[name] = fn()
        except (QMPError, KeyError) as err:
            t[name] = "error: %s" % err
    return t


def inflight_summary(t):
    out = []
    for d in t.get("devices", []):
        qs = [(x["queue"], x["queue-status"].get("inuse", 0)) for x in d.get("queues", [])]
        out.append({"path": d["path"], "name": d["name"],
                    "inuse": {str(i): n for i, n in qs if n},
                    "total": sum(n for _, n in qs)})
    return out


# -------------------------------------------------------------- stream's vmdesc
def stream_sections(path):
    """The JSON description QEMU writes after the last section
    (QEMU_VM_VMDESCRIPTION: u8 0x06, be32 length, JSON)."""
    with open(path, "rb") as f:
        data = f.read()
    # the JSON is the stream's last record: 0x06, its length, then the JSON up to the end.
    # It opens with "page_size" (7.2) or with the configuration section's description
    # ({"configuration": ..., "page_size": ...}, QEMU 10.0)
    i, ln = -1, None
    end = len(data)
    while True:
        end = data.rfind(b'{"', max(0, len(data) - (64 << 20)), end)
        if end < 5:
            break
        if data[end - 5] == 6 and int.from_bytes(data[end - 4:end], "big") == len(data) - end:
            i, ln = end, len(data) - end
            break
    if i < 0:
        i = data.rfind(b'{"page_size"')
        if i < 0:
            return {"error": "no vmdesc JSON found"}
        ln = int.from_bytes(data[i - 4:i], "big") if i >= 5 and data[i - 5] == 6 else None
    text = data[i:i + ln] if ln else data[i:]
    desc, _ = json.JSONDecoder().raw_decode(text.decode("utf-8", "replace"))
    secs = [{"idstr": d["name"], "instance_id": d.get("instance_id"),
             "vmsd_name": d.get("vmsd_name"), "version": d.get("version")}
            for d in desc.get("devices", [])]
    return {"page_size": desc.get("page_size"), "sections": secs}


def main():
    a = sys.argv[1:]
    if len(a) == 2 and a[0] == "sections":
        json.dump(stream_sections(a[1]), sys.stdout, indent=1)
        print()
        return
    if len(a) == 2 and a[0] == "inflight":
        with open(a[1]) as f:
            json.dump(inflight_summary(json.load(f)), sys.stdout)
        print()
        return
    if len(a) < 1:
        sys.exit(__doc__)
    sock = a[0]
    q = QMP(sock)
    for step in a[1:]:
        kind, _, arg = step.partition(":")
        if step.startswith("{"):
            print(json.dumps(q.send(json.loads(step))), flush=True)
        elif kind == "hmp":
            print(q.hmp(arg), flush=True)
        elif kind == "sleep":
            time.sleep(float(arg))
        elif step == "status":
            print("status:", q.status(), flush=True)
        elif kind == "wait-status":
            want, _, to = arg.partition(",")
            want = want.split("|")
            deadline = time.time() + float(to or 60)
            while True:
                st = q.status()
                if st in want:
                    print("status:", st, flush=True)
                    break
                if time.time() > deadline:
                    sys.exit("timeout waiting for state %s (now %s)" % (want, st))
                time.sleep(0.2)
        elif kind.startswith("wait-load"):
            to = kind.partition(",")[2] or arg or "90"
            deadline = time.time() + float(to)
            try:
                while True:
                    st = q.status()
                    if st != "inmigrate":
                        print("loaded:", st, flush=True)
                        break
                    if time.time() > deadline:
                        sys.exit("timeout: still inmigrate")
                    time.sleep(0.2)
            except (EOFError, OSError) as err:
                print("load failed: QEMU went away (%s)" % err, flush=True)
                sys.exit(3)
        elif kind == "wait-serial":
            spec, to = (arg.rsplit(",", 1) if "," in arg else (arg, "120"))
            path, _, text = spec.partition(":")
            deadline = time.time() + float(to)
            n = 0
            while True:
                try:
                    with open(path, "rb") as f:
                        if text.encode() in f.read():
                            print("serial has:", text, flush=True)
                            break
                except FileNotFoundError:
                    pass
                if time.time() > deadline:
                    sys.exit("timeout waiting for %r on the serial console" % text)
                n += 1
                if n % 10 == 0:
                    q.status()  # raises EOFError if QEMU is gone
                time.sleep(0.3)
        elif kind == "migrate":
            uri, to = arg, "180"
            if "," in arg and arg.rsplit(",", 1)[1].isdigit():
                uri, to = arg.rsplit(",", 1)
            q.cmd("migrate", uri=uri)
            deadline = time.time() + float(to)
            while True:
                m = q.cmd("query-migrate")
                if m.get("status") in ("completed", "failed", "cancelled"):
                    print("migrate:", json.dumps(m), flush=True)
                    if m["status"] != "completed":
                        sys.exit("migration %s: %s" % (m["status"], m.get("error-desc", "")))
                    break
                if time.time() > deadline:
                    sys.exit("migration did not finish in %ss" % to)
                time.sleep(0.1)
        elif kind == "truth":
            t = virtio_truth(q, os.path.abspath(arg) + ".pmem.tmp")
            t["events"] = q.events
            with open(arg, "w") as f:
                json.dump(t, f, indent=1, sort_keys=True)
            print("truth:", arg, flush=True)
        elif step == "quit":
            try:
                q.cmd("quit")
            except (EOFError, OSError):
                pass
        else:
            sys.exit("unknown step %r" % step)


if __name__ == "__main__":
    main()
