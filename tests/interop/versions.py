#!/usr/bin/env python3
"""Versions suite: streams of one QEMU release loaded by another, as written and after
`vmstate convert --target`, with `vmstate compat` predicting each outcome.

usage: versions.py --vmstate PATH --schemas DIR [--assets DIR] [--work DIR] [--results FILE]
                   [--jobs N] [--keep] [SCENARIO ...]

QEMU 10.0 (bookworm-backports, unpacked by tests/machines/make-machine-corpus.sh
--fetch-qemu, nothing installed) and Debian's QEMU 7.2 run the interop suite's guest: a tiny
Linux writing a known pattern to a disk whose writes all fail on the source (blkdebug,
werror=stop), so the VM stops with requests in flight on virtio-blk (split ring, two queues,
packed ring) or virtio-scsi. Both sides use the default machine type (`-machine q35`:
pc-q35-10.0 on 10.0, pc-q35-7.2 on 7.2). Each stream is
- loaded by the other release as written: QEMU must refuse it, with the message that
  `vmstate compat STREAM DST-SCHEMA` gave first (exit 1);
- converted with `vmstate convert --target DST-SCHEMA` (with --packed-ndescs-after for the
  packed ring, which QEMU's own loader needs): `compat` must say it is compatible (exit 0),
  QEMU must load it, and after `cont` the guest must finish every write and read it back.

DST-SCHEMA is the destination's `-dump-vmstate` file from ../shared/schemas. Prints a results
table, writes the facts as JSON (--results), exits 0 when every scenario met its expectation,
1 when one did not, 2 when QEMU or the guest cannot be prepared: it never skips quietly.
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
from interop import COMPLETES, REFUSED, SetupError

HERE = interop.HERE
ROOT = os.path.abspath(os.path.join(HERE, "../.."))
log = interop.make_log("versions")

SCHEMAS = {"10.0": "qemu10.0-pc-q35-10.0.json", "7.2": "qemu7.2-pc-q35-7.2.json"}
MACHINES = {"10.0": "pc-q35-10.0", "7.2": "pc-q35-7.2"}


class BackportsQemu:
    """bookworm-backports' QEMU 10.0 for x86, unpacked with a private apt state by the machine
    corpus script (reused when it is there already) and run from its folder."""

    slow = 1

    def __init__(self):
        script = os.path.join(ROOT, "tests/machines/make-machine-corpus.sh")
        env = dict(os.environ, QEMU_VERSION="10.0")
        p = subprocess.run(["bash", script, "--fetch-qemu", interop.QEMU], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0:
            raise SetupError("fetching QEMU 10.0 failed:\n%s" % p.stderr.decode(errors="replace")[-3000:])
        exe, extra, data = None, {}, []
        for line in p.stdout.decode().splitlines():
            key, _, value = line.partition("=")
            if key == "BIN":
                exe = value
            elif key == "ENV":
                name, _, v = value.partition("=")
                extra[name] = v
            elif key == "DATA":
                data += ["-L", value]
        if exe is None:
            raise SetupError("make-machine-corpus.sh --fetch-qemu named no binary:\n%s" % p.stdout.decode())
        self.command = [exe] + data
        self.env = dict(os.environ, **extra)
        r = subprocess.run(self.command + ["--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env=self.env)
        self.version = r.stdout.decode(errors="replace").splitlines()[0]
        if r.returncode != 0 or "version 10.0" not in self.version:
            raise SetupError("%s is not QEMU 10.0: %s" % (exe, self.version))


# source name -> (release that writes it, interop source properties)
SOURCES = {
    "10.0-split": ("10.0", {"smp": 1, "props": "", "host": "10.0"}),
    "10.0-mq2": ("10.0", {"smp": 2, "props": ",num-queues=2", "min_queues": 2, "host": "10.0"}),
    "10.0-packed": ("10.0", {"smp": 1, "props": ",packed=on", "host": "10.0"}),
    "10.0-scsi": ("10.0", {"smp": 1, "props": "", "scsi": True, "host": "10.0"}),
    "7.2-split": ("7.2", {"smp": 1, "props": ""}),
    "7.2-scsi": ("7.2", {"smp": 1, "props": "", "scsi": True}),
}
OTHER = {"10.0": "7.2", "7.2": "10.0"}


def scenarios():
    """(name, source, converted?, extra convert options) for every source, both ways."""
    out = []
    for name, (release, src) in SOURCES.items():
        extra = ["--packed-ndescs-after"] if "packed" in name else []
        out.append((name + "-as-written", name, False, []))
        out.append((name + "-converted", name, True, extra))
    return out


def compat(suite, stream, schema):
    """`vmstate compat --json STREAM SCHEMA`: (exit code, report)."""
    p = subprocess.run([suite.vmstate, "compat", "--json", stream, schema],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        report = json.loads(p.stdout.decode(errors="replace"))
    except ValueError:
        report = {"unreadable": p.stderr.decode(errors="replace")}
    return p.returncode, report


def qemu_message(error_lines):
    """QEMU's first message, without the program name it starts with."""
    first = error_lines.splitlines()[0] if error_lines else ""
    return first.split(": ", 1)[1] if ": " in first else first


def run_scenario(suite, streams, schemas, hosts, scn):
    name, source, converted, extra = scn
    release, src = SOURCES[source]
    dst = OTHER[release]
    folder = os.path.join(suite.work, name)
    os.makedirs(folder, exist_ok=True)
    t0 = time.time()
    stream = streams[source]
    r = {"name": name, "source": source, "from": release, "to": dst, "vmstate": []}
    if converted:
        out = os.path.join(folder, "stream.mig")
        args = ["convert", "--target", schemas[dst]] + extra + [stream, out]
        p = subprocess.run([suite.vmstate] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        r["vmstate"].append("vmstate " + " ".join(shlex.quote(os.path.basename(a)) for a in args))
        r["convert_exit"] = p.returncode
        r["convert_said"] = p.stderr.decode(errors="replace").strip()
        if p.returncode != 0:
            r.update(ok=False, loaded=False, expect=COMPLETES, held="-")
            return r
        stream = out
    r["compat_exit"], r["compat"] = compat(suite, stream, schemas[dst])
    problems = r["compat"].get("problems", [])
    r["compat_first"] = problems[0].get("qemu_message") if problems else None
    if converted:
        r["expect"] = COMPLETES
        res = suite.destination(os.path.join(folder, "dst"), src, "exec:cat %s" % shlex.quote(stream),
                                COMPLETES, host=hosts.get(dst))
        r.update(res)
        r["ok"] = r["ok"] and r["compat_exit"] == 0
    else:
        r["expect"] = REFUSED
        # what QEMU must print is what compat said first: run it, then compare
        res = suite.destination(os.path.join(folder, "dst"), src, "exec:cat %s" % shlex.quote(stream),
                                REFUSED, r["compat_first"] or "(compat predicted no refusal)",
                                host=hosts.get(dst))
        r.update(res)
        r["qemu_first"] = qemu_message(r.get("qemu_error", ""))
        r["ok"] = r["ok"] and r["compat_exit"] == 1 and r["qemu_first"] == r["compat_first"]
    r["seconds"] = round(time.time() - t0, 1)
    return r


def table(results):
    lines = ["| scenario | in flight at save | vmstate | compat | QEMU loads? | guest completes? "
             "| expected | QEMU says |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "qemu_exit" in r:
            loads, done, expected, said = interop.row_cells(r, interop.DONE, interop.FAILED)
        else:
            loads, done, expected, said = "-", "-", r["expect"] + ": **NOT MET**", r.get("convert_said", "-")
        verdict = {0: "compatible", 1: "problems: %s" % r.get("compat_first")}.get(r.get("compat_exit"),
                                                                                   "exit %s" % r.get("compat_exit"))
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["name"], r.get("held", "-"), "; ".join(r["vmstate"]) or "-", verdict.replace("|", "\\|"),
            loads, done, expected, said))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vmstate", required=True, help="the vmstate binary")
    ap.add_argument("--schemas", default=os.path.join(ROOT, "../shared/schemas"),
                    help="folder with the -dump-vmstate files (default: ../shared/schemas)")
    ap.add_argument("--assets", default=os.path.join(ROOT, "../shared/corpus/assets"),
                    help="folder with bzImage and initramfs-tiny.cpio.gz (default: ../shared/corpus/assets)")
    ap.add_argument("--work", help="scratch folder (default: a new temporary folder, removed unless --keep)")
    interop.add_run_args(ap)
    ap.add_argument("scenarios", nargs="*", help="only these (default: all)")
    a = ap.parse_args()
    t0 = time.time()
    work = os.path.abspath(a.work or tempfile.mkdtemp(prefix="vmstate-versions-"))
    os.makedirs(work, exist_ok=True)
    wanted = [s for s in scenarios() if not a.scenarios or s[0] in a.scenarios]
    try:
        if not os.access(a.vmstate, os.X_OK):
            raise SetupError("vmstate binary not found: %s" % a.vmstate)
        schemas = {v: os.path.join(os.path.abspath(a.schemas), f) for v, f in SCHEMAS.items()}
        for f in schemas.values():
            if not os.path.isfile(f):
                raise SetupError("schema missing: %s" % f)
        interop.ensure_qemu()
        hosts = {"10.0": BackportsQemu()}
        system = subprocess.run([interop.QEMU, "--version"], stdout=subprocess.PIPE).stdout.decode().splitlines()[0]
        if "version 7.2" not in system:
            raise SetupError("the system's QEMU is not 7.2: %s" % system)
        log(system)
        log(hosts["10.0"].version)
        kernel, initrd = interop.prepare_guest(os.path.abspath(a.assets), work)
        suite = interop.Suite(os.path.abspath(a.vmstate), kernel, initrd, work, hosts)
        needed = sorted({s[1] for s in wanted})
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            recorded = dict(zip(needed, pool.map(lambda n: suite.record_source(n, SOURCES[n][1]), needed)))
        streams = {n: recorded[n][0] for n in needed}
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            results = list(pool.map(lambda s: run_scenario(suite, streams, schemas, hosts, s), wanted))
        for r in results:
            r["held"] = "+".join(str(n) for n in recorded[r["source"]][1]["held_per_queue"])
    except Exception as e:
        return interop.failure(e, work, log)
    seconds = round(time.time() - t0, 1)
    print(system)
    print(hosts["10.0"].version)
    print(table(results))
    print("suite: %.0f s" % seconds)
    if a.results:
        with open(a.results, "w") as f:
            json.dump({"seconds": seconds, "results": results}, f, indent=1)
    bad = [r["name"] for r in results if not r.get("ok")]
    return interop.verdict(bad, work, a, log)


if __name__ == "__main__":
    sys.exit(main())
