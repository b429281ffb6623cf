#!/usr/bin/env python3
"""qcow2 internal snapshots made by real QEMU (`savevm`), read by vmstate.

usage: qcow2.py --vmstate PATH --work DIR [--results FILE]
       qcow2.py --fixture OUT.qcow2          (the committed fixture: 16 MiB guest, 4 KiB clusters)

For each image layout (cluster sizes 4 KiB, 64 KiB and 2 MiB, extended L2 entries), a QEMU
with no guest (-S) and a virtio-blk disk on the image takes two snapshots with HMP `savevm`;
vmstate lists them (`dump`, the newest by default, `--snapshot` for the other), writes each
snapshot's VM state out as a bare stream (`convert`), and a fresh QEMU loads that stream
with `-incoming`: it must reach the saved run state. The results go to --results as JSON.
Exits 0 when every image passed, 1 when one did not, 2 when QEMU or qemu-img is missing.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interop import QMP  # noqa: E402  (the suites' one QMP client)

QEMU = "qemu-system-x86_64"
LAYOUTS = {"4k": "cluster_size=4096", "64k": "cluster_size=65536", "2m": "cluster_size=2097152",
           "extended-l2": "extended_l2=on,cluster_size=65536"}


def qemu(folder, mem, drive, extra):
    sock = os.path.join(folder, "qmp-%d.sock" % time.monotonic_ns())
    log = open(os.path.join(folder, "qemu.log"), "ab")
    p = subprocess.Popen(["timeout", "120", QEMU, "-nodefaults", "-machine", "q35", "-accel", "tcg",
                          "-m", str(mem), "-display", "none", "-drive", drive,
                          "-device", "virtio-blk-pci,drive=d0", "-qmp",
                          "unix:%s,server=on,wait=off" % sock] + extra,
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return p, QMP(sock, p)


def savevm(folder, image, names, mem=128):
    """Takes `names` snapshots of a guestless QEMU on `image`."""
    p, q = qemu(folder, mem, "file=%s,if=none,id=d0,format=qcow2" % image, ["-S"])
    for name in names:
        out = q.cmd("human-monitor-command", **{"command-line": "savevm " + name})
        if out.strip():
            raise RuntimeError("savevm %s: %s" % (name, out))
    q.cmd("quit")
    p.wait(30)


def loads(folder, stream, mem=128):
    """A fresh QEMU's run state after loading `stream` with -incoming (None: it exited)."""
    disk = os.path.join(folder, "plain.raw")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    p, q = qemu(folder, mem, "file=%s,if=none,id=d0,format=raw" % disk, ["-incoming", "exec:cat " + stream])
    try:
        for _ in range(100):
            status = q.cmd("query-status")["status"]
            if status != "inmigrate":
                return status
            time.sleep(0.2)
        return "inmigrate"
    except (OSError, EOFError, RuntimeError, ValueError):
        return None
    finally:
        try:
            q.cmd("quit")
        except (OSError, EOFError, RuntimeError, ValueError):
            pass
        p.wait(30)


def run(vmstate, work):
    results = []
    for layout, options in LAYOUTS.items():
        folder = os.path.join(work, layout)
        os.makedirs(folder, exist_ok=True)
        image = os.path.join(folder, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", options, image, "64M"], check=True)
        savevm(folder, image, ["first", "second"])
        r = {"layout": layout, "options": options}
        d = subprocess.run([vmstate, "dump", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        r["dump_exit"] = d.returncode
        r["dump_stderr"] = d.stderr.decode(errors="replace").strip()
        r["dump_container"] = next((l for l in d.stdout.decode(errors="replace").splitlines()
                                    if l.startswith("container: ")), "")
        r["snapshots"] = {}
        for key in ["first", "2"]:
            out = os.path.join(folder, "snapshot-%s.mig" % key)
            c = subprocess.run([vmstate, "convert", "--snapshot", key, image, out],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            s = {"convert_exit": c.returncode, "convert_stderr": c.stderr.decode(errors="replace").strip()}
            if c.returncode == 0:
                s["bytes"] = os.path.getsize(out)
                s["loaded_runstate"] = loads(folder, out)
            r["snapshots"][key] = s
        r["ok"] = (r["dump_exit"] == 0 and 'snapshot 2 "second"' in r["dump_container"]
                   and all(s.get("loaded_runstate") == "prelaunch" for s in r["snapshots"].values()))
        print("%-12s %s" % (layout, "ok" if r["ok"] else "FAILED: %s" % json.dumps(r)), flush=True)
        results.append(r)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vmstate")
    ap.add_argument("--work")
    ap.add_argument("--results")
    ap.add_argument("--fixture")
    a = ap.parse_args()
    for tool in (QEMU, "qemu-img"):
        if shutil.which(tool) is None:
            print("SETUP FAILED: %s is not installed" % tool, file=sys.stderr)
            return 2
    if a.fixture:
        folder = os.path.dirname(os.path.abspath(a.fixture))
        if os.path.exists(a.fixture):
            os.unlink(a.fixture)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", a.fixture, "1M"],
                       check=True)
        savevm(folder, a.fixture, ["fixture"], mem=16)
        return 0
    os.makedirs(a.work, exist_ok=True)
    results = run(os.path.abspath(a.vmstate), os.path.abspath(a.work))
    if a.results:
        with open(a.results, "w") as f:
            json.dump({"results": results}, f, indent=1)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
