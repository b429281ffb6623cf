#!/usr/bin/env python3
"""Interop suite on other machines: streams of aarch64 and s390x guests, changed by vmstate,
loaded by real QEMU.

usage: machines.py --vmstate PATH [--work DIR] [--corpus-work DIR] [--results FILE]
                   [--jobs N] [--keep] [--skip-install] [--qemu-version 7.2|10.0] [MACHINE ...]

MACHINE: aarch64virt-mmio (virt, virtio-blk-device over virtio-mmio), aarch64virt-pci
(virt, virtio-blk-pci) and s390x-ccw (s390-ccw-virtio, virtio-blk-ccw); default all three.

1. tests/machines/make-machine-corpus.sh records its in-flight scenario of each machine
   (OUT and WORK in this suite's folders). That gives the guest kernels and busybox
   initramfs (Debian's arm64 and s390x kernels), the source's and the destination's exact
   command lines (the machine's devices as the corpus script defines them), and its own
   stream with its own load check, which this suite reports as a row of its own.
2. This suite's guest: the corpus' initramfs plus an overlay whose /init (GUEST_INIT below)
   loads the same modules, writes a known pattern to virtio-blk (one 4 MiB O_DIRECT write,
   16 requests, then small writes 2 s later), reads every write back, and says so on the
   console. The source (the corpus' command line with this initrd and a fresh disk) fails
   every write (blkdebug, werror=stop) and stops with the requests in flight; it migrates to
   a file.
3. Per machine, vmstate makes the scenarios' streams (SCENARIOS); a fresh QEMU of the same
   machine with the same devices and a plain disk (the corpus' destination command line)
   loads each with -incoming; on `cont` the guest must finish and verify every write, and the
   host reads the pattern back from the destination's disk image. Streams QEMU must refuse
   record QEMU's own message.

Prints a results table, writes every scenario's facts as JSON (--results), exits 0 when every
scenario met its expectation, 1 when one did not, 2 (with the reason) when QEMU, the guest or
the corpus script cannot be prepared: it never skips quietly.

Every QEMU runs under `timeout`, talks only to a unix socket and files in the work folder (no
network backend), and is stopped by its own pid.
"""
import argparse
import filecmp
import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import interop  # noqa: E402  (the x86 suite: QMP, the QEMU process, newc, patterns)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "../.."))
CORPUS_SCRIPT = os.path.join(ROOT, "tests/machines/make-machine-corpus.sh")
CORPUS_TIMEOUT = 900  # seconds, for the corpus script's run
PREFIX = "MACHINES:"
READY = PREFIX + " READY"
DONE = PREFIX + " ALL WRITES DONE"
FAILED = PREFIX + " WRITES FAILED"
MIN_HELD = 4  # requests the source must hold in flight (the 4 MiB write is 16 in practice)

# Machine/transport -> the corpus script's in-flight scenario, an address outside the
# machine's RAM (-m 256: aarch64 virt's RAM is 0x40000000-0x4fffffff, s390x's 0-0x0fffffff)
# and one inside it (RAM + 16 MiB, another guest page than the element's).
MACHINES = {
    "aarch64virt-mmio": {"corpus": "aarch64virt-mmio-inflight", "outside_ram": 0x80000000,
                         "inside_ram": 0x41000000, "label": "aarch64 virt / virtio-mmio"},
    "aarch64virt-pci": {"corpus": "aarch64virt-pci-inflight", "outside_ram": 0x80000000,
                        "inside_ram": 0x41000000, "label": "aarch64 virt / virtio-pci"},
    "s390x-ccw": {"corpus": "s390x-ccw-inflight", "outside_ram": 0x40000000,
                  "inside_ram": 0x01000000, "label": "s390x s390-ccw-virtio / virtio-ccw"},
}

# The guest's writers (id, size, offset), as GUEST_INIT defines them; the disk is 16 MiB.
WRITERS = [(0, 4 << 20, 0), (7, 64 << 10, 8 << 20), (8, 12 << 10, 9 << 20), (9, 512, 10 << 20)]

GUEST_INIT = r"""#!/bin/busybox sh
# /init of tests/interop/machines.py's guest (an overlay on the machine corpus' initramfs:
# its busybox, its modules and /etc/modules.list). Loads the virtio modules, then writes a
# known pattern to /dev/vda with O_DIRECT: one 4 MiB write first (max_sectors_kb=256: 16
# requests kicked together, all held in flight by the failing source), small writes 2 s
# later; every finished write is read back and compared.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules.list); do
    insmod /lib/modules/$m.ko 2>/tmp/insmod.err || echo "MACHINES: insmod $m failed: $(cat /tmp/insmod.err)"
done
sleep 1
dev=/dev/vda
[ -e $dev ] || { echo "MACHINES: no $dev"; while true; do sleep 1; done; }
echo 256 > /sys/block/vda/queue/max_sectors_kb
echo none > /sys/block/vda/queue/scheduler 2>/dev/null
big="0:4194304:0"
small="7:65536:8388608 8:12288:9437184 9:512:10485760"
echo "MACHINES: guest up, $(uname -m) $(uname -r), max_sectors_kb=$(cat /sys/block/vda/queue/max_sectors_kb), writers: $big $small"
# Every 512-byte sector of a writer's pattern is unique: "machines W<id> sector <n>", padded.
for w in $big $small; do
    set -- $(echo "$w" | tr : ' ')
    awk -v id="$1" -v n=$(($2 / 512)) \
        'BEGIN { for (i = 0; i < n; i++) printf "%-511s\n", "machines W" id " sector " i }' > /tmp/p$1
done
sync; echo 3 > /proc/sys/vm/drop_caches
echo "MACHINES: READY"
write() {  # id size offset
    if dd if=/tmp/p$1 of=$dev bs=$2 count=1 seek=$(($3 / $2)) oflag=direct conv=notrunc 2>/tmp/e$1; then
        echo "MACHINES: W$1 done"
        : > /tmp/done$1
    else
        echo "MACHINES: W$1 FAILED: $(cat /tmp/e$1)"
    fi
}
# One read right before the writes fills the source's throttle bucket: the first write waits
# there (about a second) while the device takes the others off the ring.
dd if=$dev of=/dev/null bs=512 count=1 iflag=direct 2>/dev/null
for w in $big; do write $(echo "$w" | tr : ' ') & done
sleep 2
for w in $small; do write $(echo "$w" | tr : ' ') & done
wait
count=0 bad=0
for w in $big $small; do
    set -- $(echo "$w" | tr : ' ')
    count=$((count + 1))
    if [ -e /tmp/done$1 ] &&
        dd if=$dev bs=$2 count=1 skip=$(($3 / $2)) iflag=direct 2>/dev/null | cmp -s - /tmp/p$1; then
        echo "MACHINES: W$1 verified"
    else
        echo "MACHINES: W$1 MISMATCH"
        bad=$((bad + 1))
    fi
done
if [ $bad -eq 0 ]; then
    echo "MACHINES: ALL WRITES DONE ($count writes, all read back)"
else
    echo "MACHINES: WRITES FAILED ($bad of $count)"
fi
while true; do sleep 1; done
"""

COMPLETES = "completes"  # QEMU loads it; after `cont` every write ends and reads back
REFUSED = "refused"      # QEMU exits during the load with the expected message
CORRUPT = "corrupt"      # QEMU loads it without a word; W0 ends with the wrong bytes on disk

# name, what, vmstate steps ("{in}": the source's stream, "{out}": the result), expectation
# (None: the machine's entry in EDIT_OUTCOME), the message QEMU must exit with (REFUSED),
# which file must equal the source's stream byte for byte, and the `vmstate check` exit code
# of "{out}" (1 also needs a finding).
SCENARIOS = [
    ("unchanged", "the stream QEMU wrote, unchanged (control)",
     [], COMPLETES, None, None, 0),
    ("reencode", "convert --reencode (virtio devices written from typed state)",
     [["convert", "--reencode", "{in}", "{out}"]], COMPLETES, None, None, 0),
    ("i386-unconverted", "convert --to-layout i386 (32,780-byte elements), loaded as is",
     [["convert", "--to-layout", "i386", "{in}", "{out}"]],
     REFUSED, "virtio: error trying to map MMIO memory", None, 0),
    ("i386-to-stable", "layout round trip: --to-layout i386, then --from-layout auto "
     "--to-layout stable (equals what QEMU wrote)",
     [["convert", "--to-layout", "i386", "{in}", "{out}.i386"],
      ["convert", "--from-layout", "auto", "--to-layout", "stable", "{out}.i386", "{out}"]],
     COMPLETES, None, "{out}", 0),
    ("edit-addr-outside-ram", "negative control: vmstate edit requests[0].out[1].addr = "
     "{outside} (outside RAM)",
     [["edit", "{in}", "{out}", "--set", "virtio_devices[0].virtio.requests[0].out[1].addr={outside}"]],
     None, None, None, 1),
    ("edit-addr-inside-ram", "negative control: vmstate edit requests[0].out[1].addr = "
     "{inside} (another page of guest RAM)",
     [["edit", "{in}", "{out}", "--set", "virtio_devices[0].virtio.requests[0].out[1].addr={inside}"]],
     CORRUPT, None, None, 1),
]
# What QEMU does with the edited element, per machine: (expectation, QEMU's message).
EDIT_OUTCOME = {
    "aarch64virt-mmio": (REFUSED, "virtio: unexpected memory split"),
    "aarch64virt-pci": (REFUSED, "virtio: unexpected memory split"),
    "s390x-ccw": (REFUSED, "virtio: unexpected memory split"),
}


# QEMU, the guest or the corpus script cannot be prepared: the suite fails with this.
SetupError = interop.SetupError
log = interop.make_log("machines", clock=True)


# ------------------------------------------------------------------ preparation

def run_corpus(names, out, work, skip_install, qemu_version):
    """make-machine-corpus.sh NAME...: streams, command lines and load checks in `out`,
    kernels and initramfs in `work`/guest-ARCH."""
    env = dict(os.environ, OUT=out, WORK=work, QEMU_VERSION=qemu_version, JOBS="2")
    if skip_install:
        env["SKIP_INSTALL"] = "1"
    cmd = ["bash", CORPUS_SCRIPT] + names
    log("corpus: %s (OUT=%s WORK=%s)" % (" ".join(cmd[1:]), out, work))
    logfile = os.path.join(out, "make-machine-corpus.log")
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    with open(logfile, "wb") as f:
        try:
            p = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               timeout=CORPUS_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise SetupError("make-machine-corpus.sh did not finish in %d s (log: %s)" % (CORPUS_TIMEOUT, logfile))
    with open(logfile, errors="replace") as f:
        text = f.read()
    if p.returncode != 0:
        raise SetupError("make-machine-corpus.sh %s failed (exit %d):\n%s"
                         % (" ".join(names), p.returncode, text[-4000:]))
    for n in names:
        skipped = os.path.join(out, "qemu%s-%s.skipped" % (qemu_version, n))
        if os.path.exists(skipped):
            with open(skipped, errors="replace") as f:
                raise SetupError("QEMU %s cannot run %s: %s" % (qemu_version, n, f.read().strip()))
    log("corpus: %.0f s" % (time.time() - t0))
    return round(time.time() - t0, 1)


def parse_cmdline(path):
    """A corpus .cmdline file: (env additions, binary, arguments)."""
    try:
        with open(path) as f:
            toks = shlex.split(f.read())
    except FileNotFoundError:
        raise SetupError("the corpus script left no %s" % path)
    env = {}
    if toks and toks[0] == "env":
        toks.pop(0)
        while toks and "=" in toks[0] and not toks[0].startswith("-"):
            k, _, v = toks.pop(0).partition("=")
            env[k] = v
    if toks and toks[0] == "timeout":
        toks = toks[2:]
    if not toks:
        raise SetupError("%s is empty" % path)
    return env, toks[0], toks[1:]


class Machine:
    """One machine/transport: the corpus' command lines, rewritten for this suite's guest."""

    def __init__(self, key, corpus_out, work, qemu_version):
        self.key = key
        m = MACHINES[key]
        self.label = m["label"]
        self.corpus_name = m["corpus"]
        self.outside_ram = m["outside_ram"]
        self.inside_ram = m["inside_ram"]
        stem = os.path.join(corpus_out, "qemu%s-%s" % (qemu_version, self.corpus_name))
        self.corpus_stream = stem + ".mig"
        with open(stem + ".load-status") as f:
            self.corpus_load_status = f.read().strip()
        self.env, self.bin, self.src_args = parse_cmdline(stem + ".cmdline")
        denv, dbin, self.dst_args = parse_cmdline(stem + ".dst-cmdline")
        if dbin != self.bin:
            raise SetupError("%s: source runs %s, destination %s" % (key, self.bin, dbin))
        if not shutil.which(self.bin) and not os.path.isfile(self.bin):
            raise SetupError("%s: %s is not installed" % (key, self.bin))
        self.version = subprocess.run([self.bin, "--version"], stdout=subprocess.PIPE,
                                      env=dict(os.environ, **self.env)).stdout.decode().splitlines()[0]
        base = self.arg_after(self.src_args, "-initrd")
        self.initrd = os.path.join(work, "initrd-%s.gz" % key)
        with open(base, "rb") as f, open(self.initrd, "wb") as out:
            out.write(f.read())
            out.write(gzip.compress(interop.newc([("init", 0o100755, GUEST_INIT.encode())]), mtime=0))
        self.kernel = self.arg_after(self.src_args, "-kernel")

    @staticmethod
    def arg_after(args, opt):
        try:
            return args[args.index(opt) + 1]
        except (ValueError, IndexError):
            raise SetupError("the corpus' command line has no %s: %s" % (opt, " ".join(args)))

    def rewrite(self, args, folder, incoming=None):
        """The corpus' arguments with this suite's initrd, a fresh disk in `folder` per file
        image (same size) and no -serial/-incoming of its own; returns (args, disk images)."""
        out, disks, i = [], {}, 0
        while i < len(args):
            a = args[i]
            if a in ("-serial", "-incoming", "-qmp") and i + 1 < len(args):
                i += 2
                continue
            if a == "-initrd":
                out += [a, self.initrd]
                i += 2
                continue
            if a == "-blockdev" and i + 1 < len(args) and "driver=file" in args[i + 1]:
                props = args[i + 1].split(",")
                for k, p in enumerate(props):
                    if p.startswith("filename="):
                        old = p[len("filename="):]
                        new = os.path.join(folder, os.path.basename(old))
                        size = os.path.getsize(old) if os.path.exists(old) else 16 << 20
                        with open(new, "wb") as f:
                            f.truncate(size)
                        disks[os.path.basename(old)] = new
                        props[k] = "filename=" + new
                out += [a, ",".join(props)]
                i += 2
                continue
            out.append(a)
            i += 1
        if incoming:
            out += ["-incoming", incoming]
        return out, disks


# ------------------------------------------------------------------ QEMU and QMP

class Qemu(interop.QemuProcess):
    """One QEMU process of `machine` in its own folder (interop.py's, with the machine's
    binary and environment)."""

    log = staticmethod(log)

    def __init__(self, machine, folder, args):
        super().__init__(folder, [machine.bin], args, dict(os.environ, **machine.env),
                         name=os.path.basename(machine.bin))

    def queues(self):
        """The virtio-blk device's queues: last-avail-idx, used-idx, inuse."""
        paths = [d["path"] for d in self.qmp.cmd("x-query-virtio") if d["name"] == "virtio-blk"]
        if len(paths) != 1:
            raise RuntimeError("%d virtio-blk devices, want 1" % len(paths))
        return super().queues(paths[0])


# ------------------------------------------------------------------ the suite

class Suite(interop.Vmstate):
    def __init__(self, vmstate, work, keep):
        super().__init__(vmstate, work)
        self.keep = keep  # keep the streams of scenarios that met their expectation

    def check(self, stream):
        """`vmstate check --json`: exit code, the rules found, and the findings' text."""
        p, findings = interop.vmstate_check(self.vmstate, stream)
        rules = [f.get("rule") for f in findings]
        return {"exit": p.returncode, "rules": rules, "findings": findings[:4],
                "stderr": p.stderr.decode(errors="replace")[-1000:]}

    def source(self, machine):
        """Runs the source until it stops on the injected write error with at least MIN_HELD
        requests in flight (up to 4 runs), migrates it to a file: (stream, facts)."""
        folder = os.path.join(self.work, machine.key, "source")
        for attempt in range(1, 5):
            d = os.path.join(folder, "attempt%d" % attempt)
            os.makedirs(d, exist_ok=True)
            args, _ = machine.rewrite(machine.src_args, d)
            t0 = time.time()
            q = Qemu(machine, d, args)
            try:
                if q.qmp is None or q.wait_serial([READY], 240) is None:
                    raise SetupError("%s: the guest did not boot to READY (%s):\n%s\n%s"
                                     % (machine.key, d, q.serial_text()[-2000:], q.log_text()[-2000:]))
                boot = round(time.time() - t0, 1)
                q.wait_status({"io-error"}, 120)
                queues = q.queues()
                held = [x["inuse"] for x in queues]
                if sum(held) >= MIN_HELD:
                    stream = os.path.join(folder, "stream.mig")
                    q.migrate("exec:cat > %s" % shlex.quote(stream))
                    facts = {"attempts": attempt, "held_per_queue": held, "source_queues": queues,
                             "boot_seconds": boot, "stream_bytes": os.path.getsize(stream),
                             "serial": q.serial_text()}
                    facts["vmstate_dump"] = [l.strip() for l in self.vm("dump", stream).splitlines()
                                             if "request(s) in flight" in l or "/virtio-blk (section" in l]
                    log("%s: source held %s request(s) in flight (attempt %d, boot %.0f s), %d bytes"
                        % (machine.key, held, attempt, boot, facts["stream_bytes"]))
                    return stream, facts
            finally:
                q.stop()
            log("%s: attempt %d held %s request(s) per queue, retrying" % (machine.key, attempt, held))
        raise SetupError("%s: the source never held %d requests in flight in 4 runs" % (machine.key, MIN_HELD))

    def destination(self, machine, folder, stream, expect, expect_error):
        """A fresh QEMU with the same devices and a plain disk loads `stream`; when it loads,
        `cont`, then the guest must say it finished and read back every write."""
        os.makedirs(folder, exist_ok=True)
        args, disks = machine.rewrite(machine.dst_args, folder, "exec:cat %s" % shlex.quote(stream))
        r = {"loaded": False}
        t0 = time.time()
        q = Qemu(machine, folder, args)
        try:
            q.load_and_resume(r, 120, 180, [DONE, FAILED], t0)
        except (EOFError, OSError) as e:
            r["broke"] = "QEMU went away after the load: %s" % e
        finally:
            code = q.stop()
        r["qemu_exit"] = code
        r["qemu_log"] = q.log_text().strip()[-3000:]
        r["qemu_error"] = q.errors()
        r["serial"] = q.serial_text()
        if r["loaded"]:
            r["image"] = verify_image(disks.get("disk.img"))
        r["ok"] = judge(r, expect, expect_error)
        return r

    def scenario(self, machine, stream, facts, scn):
        name, what, steps, expect, expect_error, equal, check_exit = scn
        if expect is None:
            expect, expect_error = EDIT_OUTCOME[machine.key]
        folder = os.path.join(self.work, machine.key, name)
        os.makedirs(folder, exist_ok=True)
        t0 = time.time()
        out = os.path.join(folder, "stream.mig") if steps else stream
        outside = "0x%x" % machine.outside_ram
        inside = "0x%x" % machine.inside_ram
        commands = []
        for step in steps:
            args = [a.replace("{in}", stream).replace("{out}", out).replace("{outside}", outside)
                    .replace("{inside}", inside) for a in step]
            commands.append("vmstate " + " ".join(shlex.quote(a.replace(folder + "/", "").replace(self.work + "/", ""))
                                                  for a in args))
            self.vm(*args)
        r = {"machine": machine.key, "label": machine.label, "name": name,
             "what": what.replace("{outside}", outside).replace("{inside}", inside), "vmstate": commands, "expect": expect,
             "expect_error": expect_error, "held": "+".join(str(n) for n in facts["held_per_queue"]),
             "source_held": facts["held_per_queue"], "qemu": machine.version}
        r["check"] = self.check(out)
        r["check_expected_exit"] = check_exit
        if os.path.exists(out + ".i386"):
            r["intermediate_dump"] = [l.strip() for l in self.vm("dump", out + ".i386").splitlines()
                                      if "request(s) in flight" in l]
            r["intermediate_differs"] = not filecmp.cmp(out + ".i386", stream, shallow=False)
        if equal:
            r["equals_source_stream"] = filecmp.cmp(equal.replace("{out}", out), stream, shallow=False)
        r.update(self.destination(machine, os.path.join(folder, "dst"), out, expect, expect_error))
        r["check_ok"] = (r["check"]["exit"] == check_exit and (check_exit != 1 or bool(r["check"]["rules"])))
        r["ok"] = r["ok"] and r["check_ok"] and (not equal or r["equals_source_stream"]) and (
            "intermediate_dump" not in r or (r["intermediate_differs"]
                                             and any("(i386 layout)" in l for l in r["intermediate_dump"])))
        r["seconds"] = round(time.time() - t0, 1)
        if r["ok"] and steps and not self.keep:  # ~60 MB each; a failing one stays for a look
            for f in os.listdir(folder):
                if f.startswith("stream.mig"):
                    os.unlink(os.path.join(folder, f))
        log("%s/%s: %s%s" % (machine.key, name, "ok" if r["ok"] else "NOT MET",
                              "" if r["loaded"] else " (refused: %s)" % r["qemu_error"].replace("\n", " / ")))
        return r

    def corpus_row(self, machine):
        """The corpus script's own stream (its guest writes zeros) and its own load check."""
        st = machine.corpus_load_status
        loaded = st.startswith("loaded")
        r = {"machine": machine.key, "label": machine.label, "name": "corpus-recorded",
             "what": "make-machine-corpus.sh %s: its own stream and load check (its guest writes "
                     "4 MiB of zeros, not verified)" % machine.corpus_name,
             "expect": COMPLETES, "loaded": loaded, "corpus_load_status": st,
             "runstate": st.split("status ", 1)[1].split(";")[0] if "status " in st else None,
             "guest_result": "W0 done" if "CORPUS: W0 done" in st else None,
             "qemu_error": st.split("[qemu: ", 1)[1].rstrip("]") if "[qemu: " in st else "",
             "check": self.check(machine.corpus_stream), "check_expected_exit": 0,
             "held": corpus_held(machine.corpus_stream[:-len(".mig")] + ".truth.json")}
        r["ok"] = loaded and "CORPUS: W0 done" in st and "[qemu: " not in st and r["check"]["exit"] == 0
        return r


def corpus_held(truth):
    """virtio-blk requests in flight in a corpus stream, from the ground truth the corpus
    script read over QMP before the save (its qmp.py's in-flight summary)."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests/machines/qmp.py"), "inflight", truth],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        return str(sum(d["total"] for d in json.loads(p.stdout) if d["name"] == "virtio-blk"))
    except (ValueError, KeyError, TypeError):
        return "?"


def verify_image(img):
    """Each writer's pattern, read back from the destination's disk image."""
    if img is None:
        return {"W%d" % w: False for w, _, _ in WRITERS}
    return interop.read_patterns(img, WRITERS, "machines")


def judge(r, expect, expect_error):
    if expect == REFUSED:
        return interop.refused(r, expect_error)
    writers = ["W%d" % w for w, _, _ in WRITERS]
    if not r["loaded"] or "broke" in r:
        return False
    if expect == CORRUPT:
        # W0's request reads its data from the wrong guest page: the write "succeeds", the
        # other writes are intact
        return (r.get("guest_result") == FAILED and PREFIX + " W0 done" in r["serial"]
                and PREFIX + " W0 MISMATCH" in r["serial"] and not r["image"]["W0"]
                and all(ok for w, ok in r["image"].items() if w != "W0")
                and all("%s %s verified" % (PREFIX, w) in r["serial"] for w in writers if w != "W0")
                and r["qemu_error"] == "")
    return interop.completed(r, writers, PREFIX, DONE)


def table(results):
    lines = ["| machine / transport | scenario | held at save | QEMU loads? | guest completes the writes? "
             "| expected | QEMU's message |", "|---|---|---|---|---|---|---|"]
    for r in results:
        loads, done, expected, said = interop.row_cells(
            r, DONE, FAILED, "yes, %d writes read back, pattern on disk" % len(WRITERS))
        if r["loaded"] and r["name"] == "corpus-recorded":
            done = "yes (W0 done; zeros, not verified)" if r["guest_result"] else "no"
        lines.append("| %s | %s | %s | %s | %s | %s | %s |"
                     % (r["label"], r["name"], r["held"], loads, done, expected, said))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vmstate", required=True, help="the vmstate binary")
    ap.add_argument("--work", help="scratch folder (default: a new temporary folder, removed unless --keep)")
    ap.add_argument("--corpus-work", help="the corpus script's WORK (downloaded kernels, initramfs; "
                    "reused when already there; default: in the work folder)")
    interop.add_run_args(ap)
    ap.add_argument("--skip-install", action="store_true", help="the corpus script installs nothing (SKIP_INSTALL=1)")
    ap.add_argument("--qemu-version", default="7.2", choices=("7.2", "10.0"),
                    help="the corpus script's QEMU_VERSION: 7.2 (Debian 12's, default) or 10.0 "
                    "(bookworm-backports', unpacked by the corpus script); the expectations are 7.2's")
    ap.add_argument("machines", nargs="*", help="only these (default: %s)" % " ".join(MACHINES))
    a = ap.parse_args()
    t0 = time.time()
    work = os.path.abspath(a.work or tempfile.mkdtemp(prefix="vmstate-machines-"))
    os.makedirs(work, exist_ok=True)
    keys = a.machines or list(MACHINES)
    timings = {}
    try:
        for k in keys:
            if k not in MACHINES:
                raise SetupError("unknown machine %s (known: %s)" % (k, " ".join(MACHINES)))
        if not os.access(a.vmstate, os.X_OK):
            raise SetupError("vmstate binary not found: %s" % a.vmstate)
        if not os.path.isfile(CORPUS_SCRIPT):
            raise SetupError("%s is missing" % CORPUS_SCRIPT)
        corpus_out = os.path.join(work, "corpus")
        corpus_work = os.path.abspath(a.corpus_work or os.path.join(work, "corpus-work"))
        timings["corpus_script"] = run_corpus([MACHINES[k]["corpus"] for k in keys], corpus_out, corpus_work,
                                              a.skip_install, a.qemu_version)
        machines = [Machine(k, corpus_out, work, a.qemu_version) for k in keys]
        for m in machines:
            log("%s: %s, kernel %s" % (m.key, m.version, m.kernel))
        suite = Suite(os.path.abspath(a.vmstate), work, a.keep)
        t1 = time.time()
        results, sources = [], {}
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            pending = {pool.submit(suite.source, m): m for m in machines}
            scenario_futures = []
            for f in as_completed(list(pending)):
                m = pending[f]
                stream, facts = f.result()
                sources[m.key] = facts
                scenario_futures += [pool.submit(suite.scenario, m, stream, facts, s) for s in SCENARIOS]
            done = [f.result() for f in scenario_futures]
        timings["sources_and_destinations"] = round(time.time() - t1, 1)
        order = {s[0]: i for i, s in enumerate(SCENARIOS)}
        for m in machines:
            results.append(suite.corpus_row(m))
            results += sorted((r for r in done if r["machine"] == m.key), key=lambda r: order[r["name"]])
    except Exception as e:
        return interop.failure(e, work, log)
    seconds = round(time.time() - t0, 1)
    versions = sorted({m.version for m in machines})
    print("; ".join(versions))
    print(table(results))
    print("suite: %.0f s (corpus script %.0f s, sources and destinations %.0f s)"
          % (seconds, timings["corpus_script"], timings["sources_and_destinations"]))
    if a.results:
        with open(a.results, "w") as f:
            json.dump({"qemu": versions, "seconds": seconds, "timings": timings, "sources": sources,
                       "results": results}, f, indent=1)
    bad = ["%s/%s" % (r["machine"], r["name"]) for r in results if not r["ok"]]
    return interop.verdict(bad, work, a, log)


if __name__ == "__main__":
    sys.exit(main())
