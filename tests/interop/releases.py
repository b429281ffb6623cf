#!/usr/bin/env python3
"""Releases suite: `vmstate compat SRC --to X.Y` against what QEMU X.Y does with the stream,
for streams of QEMU 5.2, 7.2, 10.0 and 11.1 and each of the four as the destination.

usage: releases.py --vmstate PATH [--assets DIR] [--trees DIR] [--work DIR] [--results FILE]
                   [--jobs N] [--keep]

Debian's QEMU 7.2 (installed) and 5.2 (bullseye), 10.0 (trixie) and 11.1 (trixie-backports),
each unpacked with ../shared/tools/qemu-tree.sh into --trees (default: the work folder; kept
there when given) with a private apt state, nothing installed. Each release boots the
corpus's tiny Linux (`corpus.mode=idle`) on its own q35 machine type with virtio-blk, -net,
-scsi, -serial, -balloon and -rng, and is migrated to a file once the guest is idle; 5.2's
stream (whose balloon subsection QEMU 5.1 to 6.1 misname) is also passed through `vmstate
convert --mend-names`. For every stream and destination release:
- `vmstate compat --json STREAM --to X.Y` gives a verdict and the machine type the
  destination runs (the stream's own when X.Y has it, else X.Y's q35);
- QEMU X.Y is started with that machine type, the same devices and `-incoming`: it loads
  the stream and the guest runs after `cont`, or it refuses.
Then new -> old with requests in flight: QEMU 11.1 runs the interop suite's guest (every write
fails, `werror=stop`) with virtio-blk on a split and on a packed ring and with virtio-scsi; each
stream is rewritten with `vmstate convert --target X.Y` (and `--packed-ndescs-after` for the
packed ring) for 7.2 and 10.0, `compat --to X.Y` must say it is compatible, and QEMU X.Y must
load it with its own q35 machine type and the guest finish every write after `cont`.
Each pair must agree: compat exit 0 exactly where QEMU loads and the guest runs, and where
QEMU refuses, it prints the message compat gave first (QEMU 11 prints it inside its own). Prints a table, writes the facts as
JSON (--results); exits 0 when every pair agreed, 1 when one did not, 2 when QEMU or the
guest cannot be prepared: it never skips quietly.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import interop
from interop import SetupError

HERE = interop.HERE
ROOT = os.path.abspath(os.path.join(HERE, "../.."))
log = interop.make_log("releases")

# release -> the Debian suite qemu-tree.sh takes it from (None: the installed QEMU)
RELEASES = {"5.2": "bullseye", "7.2": None, "10.0": "trixie", "11.1": "trixie-backports"}
DISK = 16 << 20


class Tree:
    """One release's qemu-system-x86_64: the installed one, or a tree qemu-tree.sh unpacked."""

    slow = 1

    def __init__(self, release, suite, trees, shared):
        if suite is None:
            interop.ensure_qemu()
            self.command = [interop.QEMU]
        else:
            dest = os.path.join(trees, release)
            exe = os.path.join(dest, "qemu-system-x86_64")
            if not os.access(exe, os.X_OK):
                script = os.path.join(shared, "tools/qemu-tree.sh")
                env = dict(os.environ, APTX=os.path.join(trees, "aptx-" + suite), TARGETS="x86_64")
                p = subprocess.run(["bash", script, release, suite, dest], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                if p.returncode != 0 or not os.access(exe, os.X_OK):
                    raise SetupError("qemu-tree.sh %s %s failed:\n%s"
                                     % (release, suite, p.stdout.decode(errors="replace")[-3000:]))
            self.command = [exe]
        self.env = None
        r = subprocess.run(self.command + ["--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.version = r.stdout.decode(errors="replace").splitlines()[0]
        if r.returncode != 0 or ("version %s." % release) not in self.version:
            raise SetupError("%s is not QEMU %s: %s" % (self.command[0], release, self.version))


def devices(folder, machine, assets):
    """The corpus's booted-idle command line (its device set) on `machine`, disks in `folder`."""
    os.makedirs(folder, exist_ok=True)
    for name in ("blk0", "scsi0"):
        with open(os.path.join(folder, name + ".img"), "wb") as f:
            f.truncate(DISK)
    img = lambda n: os.path.join(folder, n + ".img")
    return [
        "-nodefaults", "-accel", "tcg", "-m", "128", "-display", "none", "-no-reboot",
        "-machine", machine, "-smp", "1",
        "-kernel", os.path.join(assets, "bzImage"), "-initrd", os.path.join(assets, "initramfs-tiny.cpio.gz"),
        "-append", "console=ttyS0 panic=-1 loglevel=4 nokaslr init_on_free=1 corpus.mode=idle",
        "-blockdev", "driver=file,filename=%s,node-name=f0" % img("blk0"),
        "-blockdev", "driver=raw,file=f0,node-name=d0", "-device", "virtio-blk-pci,drive=d0,id=vblk0",
        "-netdev", "hubport,id=n0,hubid=0",
        "-device", "virtio-net-pci,netdev=n0,id=vnet0,romfile=,mac=52:54:00:12:34:56",
        "-device", "virtio-scsi-pci,id=vscsi0",
        "-blockdev", "driver=file,filename=%s,node-name=f1" % img("scsi0"),
        "-blockdev", "driver=raw,file=f1,node-name=d1", "-device", "scsi-hd,drive=d1,bus=vscsi0.0,id=sd0",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", "file,path=%s,id=c0" % os.path.join(folder, "vport0.out"),
        "-device", "virtserialport,chardev=c0,bus=vser0.0,name=org.corpus.0,id=port0",
        "-device", "virtio-balloon-pci,id=balloon0",
        "-object", "rng-builtin,id=rng0", "-device", "virtio-rng-pci,rng=rng0,id=vrng0",
    ]


def record(work, release, tree, assets):
    """A booted idle guest of `release` on its own q35 machine type, migrated to a file."""
    folder = os.path.join(work, "source-" + release)
    q = interop.QemuProcess(folder, tree.command, devices(folder, "q35", assets), tree.env)
    stream = os.path.join(folder, "stream.mig")
    try:
        if q.qmp is None or q.wait_serial(["CORPUS: READY"], 240) is None:
            raise SetupError("QEMU %s: the guest did not get to READY:\n%s\n%s"
                             % (release, q.serial_text()[-1500:], q.log_text()[-1500:]))
        time.sleep(3)
        q.qmp.cmd("stop")
        q.migrate("exec:cat > %s" % shlex.quote(stream))
    finally:
        q.stop()
    log("source %s: %d bytes" % (release, os.path.getsize(stream)))
    return stream


def load(folder, tree, machine, stream, assets):
    """QEMU loading `stream` with `machine`: (loaded and running after cont, its messages)."""
    args = devices(folder, machine, assets) + ["-incoming", "exec:cat %s" % shlex.quote(stream)]
    q = interop.QemuProcess(folder, tree.command, args, tree.env)
    running = False
    try:
        if q.qmp is not None:
            st = q.wait_status({"paused", "running", "postmigrate"}, 120)
            if st == "paused":
                q.qmp.cmd("cont")
                time.sleep(2)
                running = q.qmp.cmd("query-status")["status"] == "running"
    except (EOFError, OSError, RuntimeError, TimeoutError):
        pass  # QEMU exited while loading: its messages say why
    finally:
        q.stop()
    messages = [l.split(": ", 1)[1] for l in q.errors().splitlines() if ": " in l]
    return running, [m for m in messages if not m.startswith("warning:")]


def pair(suite, streams, trees, assets, src, dst):
    folder = os.path.join(suite.work, "%s-to-%s" % (src, dst))
    os.makedirs(folder, exist_ok=True)
    p = subprocess.run([suite.vmstate, "compat", "--json", streams[src], "--to", dst],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    report = json.loads(p.stdout.decode(errors="replace") or "{}")
    problems = report.get("problems", [])
    first = problems[0].get("qemu_message") if problems else None
    machine = report.get("destination", {}).get("machine") or "q35"
    running, messages = load(os.path.join(folder, "dst"), trees[dst], machine, streams[src], assets)
    # QEMU 11 prints the loader's message inside its own ("load of migration failed: ...").
    said = first is not None and any(first in m for m in messages)
    ok = (p.returncode == 0) == running and (running or said)
    return {"name": "%s-to-%s" % (src, dst), "from": src, "to": dst, "machine": machine,
            "compat_exit": p.returncode, "compat_first": first, "qemu_runs": running,
            "qemu_messages": messages[:4], "ok": ok}


# in-flight sources on 11.1: name -> interop source properties
IN_FLIGHT = {
    "split": {"smp": 1, "props": "", "host": "11.1"},
    "packed": {"smp": 1, "props": ",packed=on", "host": "11.1"},
    "scsi": {"smp": 1, "props": "", "scsi": True, "host": "11.1"},
}


def in_flight(suite, streams, trees, kind, dst):
    """An 11.1 stream with requests in flight, converted for `dst`, loaded there."""
    src = IN_FLIGHT[kind]
    folder = os.path.join(suite.work, "11.1-%s-to-%s" % (kind, dst))
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, "stream.mig")
    extra = ["--packed-ndescs-after"] if kind == "packed" else []
    p = subprocess.run([suite.vmstate, "convert", "--target", dst] + extra + [streams[kind], out],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    r = {"name": "11.1-%s-to-%s" % (kind, dst), "from": "11.1", "to": dst, "machine": "q35",
         "in_flight": kind, "convert_exit": p.returncode,
         "convert_said": p.stderr.decode(errors="replace").strip()[-600:]}
    if p.returncode != 0:
        r.update(ok=False, compat_exit=None, compat_first=None, qemu_runs=False, qemu_messages=[])
        return r
    c = subprocess.run([suite.vmstate, "compat", "--json", out, "--to", dst],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    problems = json.loads(c.stdout.decode(errors="replace") or "{}").get("problems", [])
    host = None if RELEASES[dst] is None else trees[dst]
    res = suite.destination(os.path.join(folder, "dst"), src, "exec:cat %s" % shlex.quote(out),
                            interop.COMPLETES, host=host)
    r.update(compat_exit=c.returncode,
             compat_first=problems[0].get("qemu_message") if problems else None,
             qemu_runs=bool(res.get("ok")), qemu_messages=[res.get("guest_result") or ""],
             ok=bool(res.get("ok")) and c.returncode == 0)
    return r


def table(results):
    lines = ["| stream | destination | machine | compat | QEMU | agree |", "|---|---|---|---|---|---|"]
    for r in results:
        verdict = "compatible" if r["compat_exit"] == 0 else "refused: %s" % r["compat_first"]
        if "in_flight" in r:
            verdict = "after convert --target: " + verdict
            qemu = ("loads, every write in flight completes" if r["qemu_runs"]
                    else "fails: %s" % "; ".join(r["qemu_messages"][:2]))
        else:
            qemu = "loads, guest runs" if r["qemu_runs"] else "refuses: %s" % "; ".join(r["qemu_messages"][:2])
        stream = r["from"] + (" (%s, in flight)" % r["in_flight"] if "in_flight" in r else "")
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            stream, r["to"], r["machine"], verdict.replace("|", "\\|"), qemu.replace("|", "\\|"),
            "yes" if r["ok"] else "**NO**"))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vmstate", required=True, help="the vmstate binary")
    ap.add_argument("--assets", default=os.path.join(ROOT, "../shared/corpus/assets"),
                    help="folder with bzImage and initramfs-tiny.cpio.gz (default: ../shared/corpus/assets)")
    ap.add_argument("--shared", default=os.path.join(ROOT, "../shared"), help="the shared folder (qemu-tree.sh)")
    ap.add_argument("--trees", help="where the QEMU trees are unpacked (default: in the work folder)")
    ap.add_argument("--work", help="scratch folder (default: a new temporary folder, removed unless --keep)")
    interop.add_run_args(ap)
    a = ap.parse_args()
    t0 = time.time()
    work = os.path.abspath(a.work or tempfile.mkdtemp(prefix="vmstate-releases-"))
    os.makedirs(work, exist_ok=True)
    trees_dir = os.path.abspath(a.trees or os.path.join(work, "trees"))
    os.makedirs(trees_dir, exist_ok=True)
    assets = os.path.abspath(a.assets)
    try:
        if not os.access(a.vmstate, os.X_OK):
            raise SetupError("vmstate binary not found: %s" % a.vmstate)
        for f in ("bzImage", "initramfs-tiny.cpio.gz"):
            if not os.path.isfile(os.path.join(assets, f)):
                raise SetupError("guest asset missing: %s" % os.path.join(assets, f))
        trees = {r: Tree(r, s, trees_dir, os.path.abspath(a.shared)) for r, s in RELEASES.items()}
        for t in trees.values():
            log(t.version)
        suite = interop.Vmstate(os.path.abspath(a.vmstate), work)
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            streams = dict(zip(RELEASES, pool.map(lambda r: record(work, r, trees[r], assets), RELEASES)))
        mended = os.path.join(work, "source-5.2", "mended.mig")
        p = subprocess.run([suite.vmstate, "convert", "--mend-names", streams["5.2"], mended],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0:
            raise SetupError("convert --mend-names failed: %s" % p.stderr.decode(errors="replace"))
        streams["5.2-mended"] = mended
        pairs = [(s, d) for s in ["5.2", "5.2-mended", "7.2", "10.0", "11.1"] for d in RELEASES]
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            results = list(pool.map(lambda sd: pair(suite, streams, trees, assets, *sd), pairs))
        kernel, initrd = interop.prepare_guest(assets, work)
        flights = interop.Suite(suite.vmstate, kernel, initrd, work, trees)
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            recorded = dict(zip(IN_FLIGHT, pool.map(
                lambda k: flights.record_source("11.1-" + k, IN_FLIGHT[k])[0], IN_FLIGHT)))
        jobs = [(k, d) for k in IN_FLIGHT for d in ("7.2", "10.0")]
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            results += list(pool.map(lambda kd: in_flight(flights, recorded, trees, *kd), jobs))
    except Exception as e:
        return interop.failure(e, work, log)
    seconds = round(time.time() - t0, 1)
    for t in trees.values():
        print(t.version)
    print(table(results))
    print("suite: %.0f s" % seconds)
    if a.results:
        with open(a.results, "w") as f:
            json.dump({"seconds": seconds, "results": results}, f, indent=1)
    bad = [r["name"] for r in results if not r["ok"]]
    return interop.verdict(bad, work, a, log)


if __name__ == "__main__":
    sys.exit(main())
