#!/usr/bin/env python3
"""Interop suite: streams changed by vmstate, loaded by real QEMU.

usage: interop.py --vmstate PATH [--assets DIR] [--work DIR] [--results FILE]
                  [--jobs N] [--keep] [SCENARIO ...]

A tiny Linux guest (the corpus' kernel and busybox initramfs, with this folder's
guest-init.sh as /init) writes a known pattern to a virtio-blk disk (or a scsi-hd on
virtio-scsi) whose writes all fail on the source QEMU (blkdebug, werror=stop): the VM stops
with requests in flight. The source
migrates to a file; vmstate transforms the file; a fresh QEMU with the same devices and a
plain disk loads the result (-incoming), is resumed with `cont`, and the guest must finish
every write and say so on its serial console ("INTEROP: ALL WRITES DONE"); the host then
reads the pattern back from the destination's disk image. Scenarios that QEMU must refuse
record the exact message it exits with.

Prints a results table, writes every scenario's facts as JSON (--results), exits 0 when every
scenario met its expectation, 1 when one did not, and 2 (with the reason) when QEMU or the
guest cannot be prepared: it never skips quietly.

Every QEMU runs under `timeout`, talks only to a unix socket and files in the work folder
(no network backend), and is stopped by its own pid.
"""
import argparse
import filecmp
import gzip
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
QEMU = "qemu-system-x86_64"
QEMU_TIMEOUT = 300  # seconds, per QEMU process
DISK_SIZE = 16 << 20
BLK = "/machine/peripheral/vblk0/virtio-backend"
SCSI = "/machine/peripheral/vscsi0/virtio-backend"
DONE = "INTEROP: ALL WRITES DONE"
FAILED = "INTEROP: WRITES FAILED"

# The guest's writers (id, size, offset), as guest-init.sh defines them; W1 only with 2 vCPUs.
WRITERS = [(0, 4 << 20, 0), (1, 4 << 20, 4 << 20), (7, 64 << 10, 8 << 20),
           (8, 12 << 10, 9 << 20), (9, 512, 10 << 20)]


class SetupError(Exception):
    """QEMU or the guest cannot be prepared: the suite fails with this reason."""


def make_log(name, clock=False):
    """A log function: "[name] msg" (with the time of day when `clock`) on stderr."""
    def log(msg):
        stamp = " " + time.strftime("%H:%M:%S") if clock else ""
        print("[%s%s] %s" % (name, stamp, msg), file=sys.stderr, flush=True)
    return log


log = make_log("interop")


# ------------------------------------------------------------------ preparation

def ensure_qemu():
    if shutil.which(QEMU):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SetupError("%s is missing and cannot be installed here (needs root and apt-get): "
                         "install Debian's qemu-system-x86" % QEMU)
    log("installing qemu-system-x86 with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"],
                ["apt-get", "install", "-y", "--no-install-recommends", "qemu-system-x86"]):
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise SetupError("%s failed:\n%s" % (" ".join(cmd), r.stdout.decode(errors="replace")[-3000:]))
    if not shutil.which(QEMU):
        raise SetupError("qemu-system-x86 installed but %s is still not on PATH" % QEMU)


class I386Qemu:
    """Debian's 32-bit qemu-system-x86 (i386 build, same release) and its libraries, unpacked
    into `cache` and run through its own loader; the system's apt configuration is untouched
    (package lists, status and archives live in `cache`). Needs a kernel that runs i386
    binaries."""

    def __init__(self, cache):
        root = os.path.join(cache, "root")
        exe = os.path.join(root, "usr/bin", QEMU)
        if not os.path.exists(exe):
            self.fetch(cache, root)
        libs = ":".join(os.path.join(root, d) for d in ("lib/i386-linux-gnu", "usr/lib/i386-linux-gnu"))
        self.command = [os.path.join(root, "lib/ld-linux.so.2"), "--library-path", libs, exe]
        for d in ("usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"):
            self.command += ["-L", os.path.join(root, d)]
        self.env = dict(os.environ, QEMU_MODULE_DIR=os.path.join(root, "usr/lib/i386-linux-gnu/qemu"))
        r = subprocess.run(self.command + ["--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env=self.env)
        if r.returncode != 0:
            raise SetupError("the i386 QEMU in %s does not run here:\n%s" % (root, r.stdout.decode(errors="replace")))
        self.version = r.stdout.decode().splitlines()[0] + " (i386 build)"

    @staticmethod
    def fetch(cache, root):
        fetch_debs(cache, root, "i386")


def fetch_debs(cache, root, arch):
    """Downloads Debian's qemu-system-x86:`arch` and every library it needs with a private apt
    state in `cache` (nothing installed: the status file is empty) and unpacks them in `root`."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise SetupError("fetching the %s QEMU needs apt-get and dpkg-deb" % arch)
    log("fetching Debian's qemu-system-x86:%s and its libraries into %s" % (arch, cache))
    for d in ("lists/partial", "archives/partial", "cache"):
        os.makedirs(os.path.join(cache, d), exist_ok=True)
    status = os.path.join(cache, "status")
    open(status, "w").close()  # nothing installed: download every dependency
    o = ["-o", "APT::Architecture=" + arch, "-o", "APT::Architectures::=" + arch,
         "-o", "Dir::State::Lists=" + os.path.join(cache, "lists"), "-o", "Dir::State::status=" + status,
         "-o", "Dir::Cache=" + os.path.join(cache, "cache"),
         "-o", "Dir::Cache::archives=" + os.path.join(cache, "archives")]
    # an index that fails (a mirror mid-sync) is not fatal as long as the download works
    subprocess.run(["apt-get"] + o + ["update"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = subprocess.run(["apt-get"] + o + ["install", "--download-only", "-y", "--no-install-recommends",
                                          "qemu-system-x86"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SetupError("cannot download qemu-system-x86:%s:\n%s" % (arch, r.stdout.decode(errors="replace")[-3000:]))
    archives = os.path.join(cache, "archives")
    for deb in sorted(os.listdir(archives)):
        if deb.endswith(".deb"):
            subprocess.run(["dpkg-deb", "-x", os.path.join(archives, deb), root], check=True)


QEMU_USER = "qemu-s390x-static"


def ensure_qemu_user():
    if shutil.which(QEMU_USER):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SetupError("%s is missing and cannot be installed here (needs root and apt-get): "
                         "install Debian's qemu-user-static" % QEMU_USER)
    log("installing qemu-user-static with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "qemu-user-static"]
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0 or not shutil.which(QEMU_USER):
        raise SetupError("%s failed:\n%s" % (" ".join(cmd), r.stdout.decode(errors="replace")[-3000:]))


class S390xQemu:
    """Debian's big-endian qemu-system-x86 (s390x build, same release) and its s390x
    libraries, unpacked into `cache` (private apt state, as for I386Qemu) and run under
    user-mode emulation: qemu-s390x-static -L ROOT ROOT/usr/bin/qemu-system-x86_64. The x86
    guest then runs under TCG inside an emulated s390x process: everything is far slower
    (`slow` scales the source's timeouts)."""

    slow = 4

    def __init__(self, cache):
        root = os.path.join(cache, "root")
        exe = os.path.join(root, "usr/bin", QEMU)
        if not os.path.exists(exe):
            fetch_debs(cache, root, "s390x")
        libs = ":".join(os.path.join(root, d) for d in ("lib/s390x-linux-gnu", "usr/lib/s390x-linux-gnu"))
        self.command = [shutil.which(QEMU_USER), "-L", root, "-E", "LD_LIBRARY_PATH=" + libs,
                        "-E", "QEMU_MODULE_DIR=" + os.path.join(root, "usr/lib/s390x-linux-gnu/qemu"), exe]
        for d in ("usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"):
            self.command += ["-L", os.path.join(root, d)]
        self.env = None
        r = subprocess.run(self.command + ["--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise SetupError("the s390x QEMU in %s does not run under %s:\n%s"
                             % (root, QEMU_USER, r.stdout.decode(errors="replace")))
        self.version = r.stdout.decode().splitlines()[0] + " (s390x build, under %s)" % QEMU_USER


def newc(entries):
    """A cpio archive (newc format) of (name, mode, bytes) regular files."""
    out = bytearray()

    def pad4():
        out.extend(b"\0" * (-len(out) % 4))
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], start=1):
        namez = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(namez), 0]
        out += b"070701" + "".join("%08X" % f for f in fields).encode() + namez
        pad4()
        out += data
        pad4()
    return bytes(out)


def prepare_guest(assets, work):
    """Kernel path and an initrd: the corpus' initramfs followed by a second archive that
    replaces its /init with guest-init.sh (the kernel unpacks concatenated archives in order)."""
    kernel = os.path.join(assets, "bzImage")
    base = os.path.join(assets, "initramfs-tiny.cpio.gz")
    for f in (kernel, base):
        if not os.path.isfile(f):
            raise SetupError("guest asset missing: %s (the corpus ships it in corpus/assets/)" % f)
    with open(os.path.join(HERE, "guest-init.sh"), "rb") as f:
        init = f.read()
    initrd = os.path.join(work, "initramfs-interop.cpio.gz")
    with open(base, "rb") as f, open(initrd, "wb") as out:
        out.write(f.read())
        out.write(gzip.compress(newc([("init", 0o100755, init)]), mtime=0))
    return kernel, initrd


# ------------------------------------------------------------------ QEMU and QMP

class QMP:
    def __init__(self, path, proc, timeout=30):
        deadline = time.time() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if proc.poll() is not None:
                    raise EOFError("QEMU exited before its QMP socket was up")
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        self.s.settimeout(120 * max(1, timeout // 30))
        self.buf = b""
        self.events = []
        self._recv()  # greeting
        self.cmd("qmp_capabilities")

    def _recv(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("QMP socket closed (QEMU exited)")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.s.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._recv()
            if "event" in r:
                self.events.append(r["event"])
                continue
            if "error" in r:
                raise RuntimeError("QMP %s: %s" % (name, r["error"].get("desc", r["error"])))
            return r["return"]

    def close(self):
        self.s.close()


class QemuProcess:
    """One QEMU process in its own folder: qemu.log (stdout+stderr), serial.log, qmp.sock.
    `prefix` runs QEMU (its binary, or a loader and its arguments), `name` is the name QEMU
    prefixes its own messages with, `slow` scales the timeouts. Also used by machines.py."""

    log = staticmethod(log)  # where "QEMU did not quit" goes

    def __init__(self, folder, prefix, args, env=None, slow=1, name=QEMU):
        os.makedirs(folder, exist_ok=True)
        self.dir = folder
        self.bin = name
        self.serial = os.path.join(folder, "serial.log")
        self.logfile = os.path.join(folder, "qemu.log")
        sock = os.path.join(folder, "qmp.sock")
        if len(sock) > 100:
            raise SetupError("work folder path too long for a unix socket: %s" % sock)
        self.slow = slow
        cmd = ["timeout", str(QEMU_TIMEOUT * self.slow)] + prefix + args + [
            "-serial", "file:" + self.serial, "-qmp", "unix:%s,server=on,wait=off" % sock]
        with open(os.path.join(folder, "cmdline"), "w") as f:
            f.write(" ".join(shlex.quote(a) for a in cmd) + "\n")
        with open(self.logfile, "wb") as out:
            # `timeout` is the process we hold; it forwards SIGTERM to its QEMU child.
            self.proc = subprocess.Popen(cmd, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        try:
            self.qmp = QMP(sock, self.proc, 30 * self.slow)
        except (EOFError, OSError):
            self.qmp = None  # QEMU exited (or closed the socket) right away: see qemu.log

    def log_text(self):
        with open(self.logfile, errors="replace") as f:
            return f.read()

    def errors(self):
        """QEMU's own messages: the lines it prefixes with its name."""
        return "\n".join(l for l in self.log_text().splitlines() if l.startswith(self.bin + ":"))

    def serial_text(self):
        try:
            with open(self.serial, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_serial(self, texts, timeout):
        """The first of `texts` to appear on the serial console (None on timeout or exit)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.serial_text()
            for t in texts:
                if t in s:
                    return t
            if self.proc.poll() is not None:
                return None
            time.sleep(0.3)
        return None

    def wait_status(self, wanted, timeout):
        deadline = time.time() + timeout
        while True:
            st = self.qmp.cmd("query-status")["status"]
            if st in wanted:
                return st
            if time.time() > deadline:
                raise TimeoutError("runstate still %s after %ss (waiting for %s)" % (st, timeout, "|".join(wanted)))
            time.sleep(0.2)

    def queues(self, path=BLK):
        """virtio-blk queue status: (last-avail-idx, used-idx, inuse) per queue."""
        out = []
        for i in range(16):
            try:
                q = self.qmp.cmd("x-query-virtio-queue-status", path=path, queue=i)
            except RuntimeError:
                break
            out.append({k: q[k] for k in ("last-avail-idx", "used-idx", "inuse")})
        return out

    def load_and_resume(self, r, load_timeout, guest_timeout, texts, t0=None):
        """For a QEMU started with -incoming: waits for the stream to load (r["runstate"],
        r["loaded"]; QEMU exiting during the load leaves r["loaded"] as it was, False), then
        sends `cont` and waits for the first of `texts` on the guest's console
        (r["guest_result"]), with the queues before and after. `t0`: when QEMU was started
        (for r["load_seconds"])."""
        try:
            if self.qmp is not None:
                r["runstate"] = self.wait_status({"paused", "io-error", "running", "postmigrate"}, load_timeout)
                r["loaded"] = True
        except (EOFError, OSError):
            pass  # QEMU exited during the load
        if r["loaded"]:
            if t0 is not None:
                r["load_seconds"] = round(time.time() - t0, 1)
            r["queues_loaded"] = self.queues()
            self.qmp.cmd("cont")
            r["guest_result"] = self.wait_serial(texts, guest_timeout)
            r["runstate_after"] = self.qmp.cmd("query-status")["status"]
            r["queues_after"] = self.queues()

    def stop(self):
        if self.qmp is not None:
            try:
                self.qmp.cmd("quit")
            except (EOFError, OSError, RuntimeError):
                pass
            self.qmp.close()
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.log("%s: QEMU did not quit, terminating pid %d" % (self.dir, self.proc.pid))
            self.proc.terminate()
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()

    def migrate(self, uri, timeout=180):
        self.qmp.cmd("migrate", uri=uri)
        timeout *= self.slow
        deadline = time.time() + timeout
        while True:
            m = self.qmp.cmd("query-migrate")
            if m.get("status") in ("completed", "failed", "cancelled"):
                if m["status"] != "completed":
                    raise RuntimeError("migrate to %s: %s %s" % (uri, m["status"], m.get("error-desc", "")))
                return m
            if time.time() > deadline:
                raise TimeoutError("migrate to %s did not finish in %ss" % (uri, timeout))
            time.sleep(0.2)


class Qemu(QemuProcess):
    def __init__(self, folder, args, host=None, backend=BLK):
        prefix, env = (host.command, host.env) if host else ([QEMU], None)
        self.backend = backend  # the virtio device whose queues are watched
        super().__init__(folder, prefix, args, env, getattr(host, "slow", 1))

    def queues(self):
        return super().queues(self.backend)


def vmstate_check(vmstate, stream):
    """`vmstate check --json` of a stream: (the finished process, its findings)."""
    p = subprocess.run([vmstate, "check", "--json", stream], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    findings = []
    try:
        report = json.loads(p.stdout.decode(errors="replace"))
        for device in report.get("devices", []):
            findings += device.get("findings", [])
    except ValueError:
        pass
    return p, findings


class Vmstate:
    """Runs the vmstate binary in the suite's work folder. Also used by machines.py."""

    def __init__(self, vmstate, work):
        self.vmstate = vmstate
        self.work = work

    def vm(self, *args):
        cmd = [self.vmstate] + list(args)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0:
            raise RuntimeError("%s: exit %d: %s" % (" ".join(cmd), p.returncode, p.stderr.decode(errors="replace")))
        return p.stdout.decode(errors="replace")


class Suite(Vmstate):
    def __init__(self, vmstate, kernel, initrd, work, hosts):
        super().__init__(vmstate, work)
        self.hosts = hosts  # other QEMU builds for sources, by name
        self.kernel = kernel
        self.initrd = initrd

    def base_args(self, src):
        disk = " interop.disk=sda" if src.get("scsi") else ""
        return ["-nodefaults", "-machine", "q35", "-accel", "tcg", "-m", "128", "-smp", str(src["smp"]),
                "-display", "none", "-no-reboot", "-kernel", self.kernel, "-initrd", self.initrd,
                "-append", "console=ttyS0 panic=-1 loglevel=4 nokaslr init_on_free=1" + disk]

    @staticmethod
    def disk(folder):
        path = os.path.join(folder, "disk.img")
        with open(path, "wb") as f:
            f.truncate(DISK_SIZE)
        return path

    @staticmethod
    def disk_device(src):
        """The guest's disk on node bd0: virtio-blk, or a scsi-hd on virtio-scsi."""
        if src.get("scsi"):
            return ["-device", "virtio-scsi-pci,id=vscsi0" + src["props"],
                    "-device", "scsi-hd,drive=bd0,bus=vscsi0.0,id=sd0,werror=stop,rerror=stop"]
        return ["-device", "virtio-blk-pci,drive=bd0,id=vblk0,werror=stop,rerror=stop" + src["props"]]

    def source(self, folder, src):
        """A source QEMU stopped on the injected write error with requests in flight: at
        least 2, on at least src['min_queues'] queues. With the throttle below it is 16 per
        4 MiB write in practice; a run that holds fewer is retried, up to 5 runs."""
        for attempt in range(1, 6):
            d = os.path.join(folder, "attempt%d" % attempt)
            os.makedirs(d, exist_ok=True)
            img = self.disk(d)
            # Every write fails (blkdebug, EIO). The throttle group on top holds the first
            # write for about a second (the guest's read just before fills its bucket), so the
            # device has taken all the requests kicked with it off the ring when the error
            # stops the VM: all of them are in flight, run after run.
            args = self.base_args(src) + [
                "-blockdev", "driver=file,filename=%s,node-name=bf0" % img,
                "-blockdev", "driver=blkdebug,image=bf0,node-name=bdbg,inject-error.0.event=write_aio,"
                             "inject-error.0.iotype=write,inject-error.0.errno=5",
                "-blockdev", "driver=raw,file=bdbg,node-name=raw0",
                "-object", "throttle-group,id=tg0,x-iops-total=1",
                "-blockdev", "driver=throttle,throttle-group=tg0,file=raw0,node-name=bd0",
            ] + self.disk_device(src)
            q = Qemu(d, args, self.hosts.get(src.get("host")), SCSI if src.get("scsi") else BLK)
            try:
                if q.qmp is None or q.wait_serial(["INTEROP: READY"], 150 * q.slow) is None:
                    raise SetupError("guest did not boot to READY (%s):\n%s\n%s"
                                     % (d, q.serial_text()[-2000:], q.log_text()[-2000:]))
                q.wait_status({"io-error"}, 120 * q.slow)
                queues = q.queues()
            except BaseException:
                q.stop()
                raise
            held = [x["inuse"] for x in queues]
            if sum(held) >= 2 and sum(1 for n in held if n) >= src.get("min_queues", 1):
                return q, {"attempts": attempt, "held_per_queue": held, "source_queues": queues}
            log("%s: attempt %d held %s request(s) per queue, retrying" % (folder, attempt, held))
            q.stop()
        raise SetupError("%s: the source never held enough requests in flight in 5 runs" % folder)

    def record_source(self, name, src):
        """Runs a source and migrates it to a file: (stream path, facts)."""
        folder = os.path.join(self.work, "source-" + name)
        t0 = time.time()
        q, facts = self.source(folder, src)
        stream = os.path.join(folder, "stream.mig")
        try:
            q.migrate("exec:cat > %s" % shlex.quote(stream))
        finally:
            q.stop()
        facts["source_seconds"] = round(time.time() - t0, 1)
        facts["stream_bytes"] = os.path.getsize(stream)
        facts["qemu"] = self.hosts[src["host"]].version if src.get("host") else "x86-64 build"
        # what vmstate makes of the stream: device line and in-flight summary
        facts["vmstate_dump"] = [l.strip() for l in self.vm("dump", stream).splitlines()
                                 if "request(s) in flight" in l]
        # the element layout `vmstate dump --json` detects (no layout flags), per virtio device
        dump = json.loads(self.vm("dump", "--json", stream))
        facts["vmstate_layouts"] = [d.get("virtio", {}).get("framing", {}).get("layout")
                                    for d in dump.get("virtio_devices", [])]
        log("source %s: %s request(s) in flight per queue, %d bytes" % (name, facts["held_per_queue"], facts["stream_bytes"]))
        return stream, facts

    def destination(self, folder, src, incoming, expect, expect_error=None, host=None):
        """Loads `incoming` into a fresh QEMU with the same devices and a plain disk; when it
        loads, resumes the guest and checks that every write completes (`expect`: COMPLETES),
        or that QEMU refuses the stream (REFUSED, exiting with `expect_error`), or that the
        guest never finishes (STUCK: requests were lost). `host`: another QEMU build to load
        it with (default: the system's)."""
        os.makedirs(folder, exist_ok=True)
        img = self.disk(folder)
        args = self.base_args(src) + [
            "-blockdev", "driver=file,filename=%s,node-name=bf0" % img,
            "-blockdev", "driver=raw,file=bf0,node-name=bd0"] + self.disk_device(src) + [
            "-incoming", incoming]
        r = {"loaded": False}
        q = Qemu(folder, args, host, backend=SCSI if src.get("scsi") else BLK)
        try:
            q.load_and_resume(r, 90, STUCK_WAIT if expect == STUCK else 180, [DONE, FAILED])
        finally:
            code = q.stop()
        r["qemu_exit"] = code
        r["qemu_log"] = q.log_text().strip()
        r["serial"] = q.serial_text()
        r["qemu_error"] = "\n".join(l for l in r["qemu_log"].splitlines() if l.startswith(QEMU + ":"))
        if r["loaded"]:
            r["image"] = verify_image(img, src["smp"])
        r["ok"] = judge(r, src, expect, expect_error)
        return r

    def check(self, stream):
        """`vmstate check --json` of a stream: its exit code and the rules it found."""
        p, findings = vmstate_check(self.vmstate, stream)
        return {"exit": p.returncode, "rules": [f["rule"] for f in findings]}


def pattern(tag, wid, size):
    """Writer `wid`'s pattern as the guest writes it: every 512-byte sector is
    "TAG W<id> sector <n>", padded."""
    return b"".join(("%s W%d sector %d" % (tag, wid, i)).ljust(511).encode() + b"\n"
                    for i in range(size // 512))


def read_patterns(img, writers, tag):
    """Each of `writers`' (id, size, offset) patterns, read back from a disk image: W<id> -> bool."""
    out = {}
    with open(img, "rb") as f:
        for wid, size, off in writers:
            f.seek(off)
            out["W%d" % wid] = f.read(size) == pattern(tag, wid, size)
    return out


def verify_image(img, smp):
    """Each writer's pattern, read back from the destination's disk image."""
    return read_patterns(img, [w for w in WRITERS if w[0] != 1 or smp >= 2], "interop")


def refused(r, expect_error):
    """QEMU exited during the load with `expect_error` among its messages."""
    return not r["loaded"] and r["qemu_exit"] not in (0, None) and expect_error in r["qemu_error"]


def completed(r, writers, prefix, done):
    """Loaded, resumed, and every one of `writers` ended, read back in the guest and is on disk."""
    serial_ok = all("%s %s done" % (prefix, w) in r["serial"] and "%s %s verified" % (prefix, w) in r["serial"]
                    for w in writers)
    return (r["loaded"] and r.get("runstate") in ("io-error", "paused")
            and r.get("guest_result") == done and serial_ok
            and all(r["image"].values()) and r["runstate_after"] == "running"
            and all(q["inuse"] == 0 for q in r["queues_after"]) and r["qemu_error"] == "")


def judge(r, src, expect, expect_error):
    if expect == REFUSED:
        return refused(r, expect_error)
    writers = ["W%d" % w for w, _, _ in WRITERS if w != 1 or src["smp"] >= 2]
    if expect == CORRUPT:
        # W0's element reads its data from the wrong guest page: the write "succeeds"
        return (r["loaded"] and r.get("guest_result") == FAILED and "INTEROP: W0 done" in r["serial"]
                and "INTEROP: W0 MISMATCH" in r["serial"] and not r["image"]["W0"]
                and all(ok for w, ok in r["image"].items() if w != "W0") and r["qemu_error"] == "")
    if expect == FAILS:
        # the device ends W0 with an I/O error; the guest goes on, and so does QEMU
        return (r["loaded"] and r.get("guest_result") == FAILED and "INTEROP: W0 FAILED" in r["serial"]
                and "INTEROP: W0 done" not in r["serial"] and not r["image"]["W0"]
                and all(ok for w, ok in r["image"].items() if w != "W0")
                and r["runstate_after"] == "running" and r["qemu_error"] == "")
    if expect == STUCK:
        # the big writes were in flight at the save: without their elements they never end
        return (r["loaded"] and r.get("guest_result") is None and "INTEROP: W0 done" not in r["serial"]
                and r["runstate_after"] == "running" and not r["image"]["W0"])
    return completed(r, writers, "INTEROP:", DONE)


# ------------------------------------------------------------------ scenarios

COMPLETES = "completes"  # QEMU loads the stream, and after `cont` the guest finishes every write
REFUSED = "refused"      # QEMU exits during the load with the expected message
STUCK = "stuck"          # QEMU loads it, but the guest never finishes (requests lost)
CORRUPT = "corrupt"      # QEMU loads it without a word and writes the wrong bytes to disk
FAILS = "fails"          # QEMU loads it, and after `cont` the device fails W0 (I/O error)
STUCK_WAIT = 20          # seconds a STUCK guest is watched (every write ends in ~3 s otherwise)

SOURCES = {
    "split": {"smp": 1, "props": ""},
    "mq2": {"smp": 2, "props": ",num-queues=2", "min_queues": 2},
    "packed": {"smp": 1, "props": ",packed=on"},
    "i386host": {"smp": 1, "props": "", "host": "i386"},  # written by the i386 QEMU build
    "s390xhost": {"smp": 1, "props": "", "host": "s390x"},  # the s390x build, under qemu-user
    "scsi": {"smp": 1, "props": "", "scsi": True},  # scsi-hd on virtio-scsi: requests in scsi-disk
}


def ram_page_offset(data, dump, gpa, page=4096):
    """Offset in a raw stream (`data`, its `vmstate dump --json` in `dump`) of the byte at
    guest-physical `gpa` of pc.ram (mapped at 0 below 2 GiB on q35), in the last PAGE
    record that carries its page."""
    found = None
    for rec in dump["records"]:
        body = rec.get("body") or {}
        if body.get("type") != "ram":
            continue
        for item in body["items"]:
            if item.get("item") != "pages" or item["block"] != "pc.ram":
                continue
            at, end = item["span"]["offset"], item["span"]["offset"] + item["span"]["len"]
            while at < end:
                word = int.from_bytes(data[at:at + 8], "big")
                at += 8
                flags, addr = word & 0xfff, word & ~0xfff
                if not flags & 0x20:  # the block's name, unless CONTINUE
                    at += 1 + data[at]
                if flags & 0x08:  # PAGE
                    if addr == gpa & ~(page - 1):
                        found = at + (gpa & (page - 1))
                    at += page
                elif flags & 0x02:  # ZERO: one fill byte
                    at += 1
                else:
                    raise RuntimeError("page record flags %#x at %d" % (flags, at - 8))
    if found is None:
        raise RuntimeError("no PAGE record for %#x" % gpa)
    return found


class GuestPoke:
    """A scenario step that edits guest memory, not device state: writes `value` (`size`
    bytes, little-endian) at `offset` into the request header of virtio device 0's request
    `request` (its first device-readable buffer), in the page the stream carries."""

    def __init__(self, request, offset, value, size):
        self.request, self.offset, self.value, self.size = request, offset, value, size

    def describe(self):
        return "guest memory: requests[%d] header + %d = %#x (%d bytes)" % (
            self.request, self.offset, self.value, self.size)

    def __call__(self, suite, inp, out):
        dump = json.loads(suite.vm("dump", "--json", inp))
        header = dump["virtio_devices"][0]["virtio"]["requests"][self.request]["out"][0]["addr"]
        with open(inp, "rb") as f:
            data = bytearray(f.read())
        at = ram_page_offset(data, dump, header + self.offset)
        data[at:at + self.size] = self.value.to_bytes(self.size, "little")
        with open(out, "wb") as f:
            f.write(data)


class ScsiCdbEdit:
    """A scenario step that rewrites the saved command block of the first SCSI disk's
    request 0 with `change` (bytes -> bytes), through `vmstate edit`."""

    def __init__(self, change, what):
        self.change, self.what = change, what

    def describe(self):
        return "vmstate edit --set 'scsi_requests[0].requests[0].cdb=...' (%s)" % self.what

    def __call__(self, suite, inp, out):
        dump = json.loads(suite.vm("dump", "--json", inp))
        cdb = bytes.fromhex(dump["scsi_requests"][0]["requests"][0]["cdb"])
        suite.vm("edit", inp, out, "--set", "scsi_requests[0].requests[0].cdb=" + self.change(cdb).hex())


def with_lba(cdb, lba):
    """A READ/WRITE(10) command block with its LBA replaced."""
    return cdb[:2] + lba.to_bytes(4, "big") + cdb[6:]


# Sector 24576 (12 MiB into the 16 MiB disk) is past every writer's data.
FAR_SECTOR = 24576

# name, source, what, how the stream is made from the source's (vmstate argument lists;
# "{in}" is the source's stream, "{out}" the result), what QEMU and the guest must do, the
# message QEMU must exit with (REFUSED), and which file ("{out}", or one made by a last
# conversion back) must equal the stream QEMU wrote byte for byte.
#
# The split-*-i386/lp64be streams are CONVERTED by vmstate from the x86-64 stream (the
# elements rewritten as a 32-bit i386 host and a 64-bit big-endian s390x host lay them out);
# the i386host-* and s390xhost-* streams are written by Debian's i386 and s390x QEMU builds.
SCENARIOS = [
    ("split-unchanged", "split", "the stream QEMU wrote, unchanged (control)",
     [], COMPLETES, None, None),
    ("split-reencode", "split", "convert --reencode (virtio devices written from typed state)",
     [["convert", "--reencode", "{in}", "{out}"]], COMPLETES, None, None),
    ("split-i386-unconverted", "split",
     "elements converted to the i386 layout (32,780-byte structs), loaded as they are",
     [["convert", "--to-layout", "i386", "{in}", "{out}"]],
     REFUSED, "virtio: error trying to map MMIO memory", None),
    ("split-i386-to-stable", "split",
     "i386-layout stream, then convert --from-layout auto --to-layout stable",
     [["convert", "--to-layout", "i386", "{in}", "{out}.i386"],
      ["convert", "--from-layout", "auto", "--to-layout", "stable", "{out}.i386", "{out}"]],
     COMPLETES, None, "{out}"),
    ("split-lp64be-unconverted", "split",
     "elements converted to the lp64-be layout (s390x-like big-endian 49,168-byte structs), "
     "loaded as they are",
     [["convert", "--to-layout", "lp64-be", "{in}", "{out}"]],
     REFUSED, "qemu_get_virtqueue_element: Assertion `ARRAY_SIZE(data.in_addr) >= data.in_num' failed",
     None),
    ("split-lp64be-to-stable", "split",
     "lp64-be-layout stream, then convert --from-layout auto --to-layout stable",
     [["convert", "--to-layout", "lp64-be", "{in}", "{out}.be"],
      ["convert", "--from-layout", "auto", "--to-layout", "stable", "{out}.be", "{out}"]],
     COMPLETES, None, "{out}"),
    ("split-reencode-i386-reencode", "split",
     "convert --reencode, then --to-layout i386, then --reencode --to-layout stable",
     [["convert", "--reencode", "{in}", "{out}.re"],
      ["convert", "--to-layout", "i386", "{out}.re", "{out}.i386"],
      ["convert", "--reencode", "--to-layout", "stable", "{out}.i386", "{out}"]],
     COMPLETES, None, None),
    ("split-edit-addr-outside-ram", "split",
     "vmstate edit: requests[0].out[1].addr = 0x40000000 (1 GiB; guest RAM is 128 MiB)",
     [["edit", "{in}", "{out}", "--set", "virtio_devices[0].virtio.requests[0].out[1].addr=0x40000000"]],
     REFUSED, "virtio: unexpected memory split", None),
    ("split-edit-addr-inside-ram", "split",
     "vmstate edit: requests[0].out[1].addr = 0x100000 (another page of guest RAM)",
     [["edit", "{in}", "{out}", "--set", "virtio_devices[0].virtio.requests[0].out[1].addr=0x100000"]],
     CORRUPT, None, None),
    ("split-requests-dropped", "split",
     "negative control: vmstate edit requests=[] (the in-flight requests lost)",
     [["edit", "{in}", "{out}", "--set", "virtio_devices[0].virtio.requests=[]"]],
     STUCK, None, None),
    ("mq2-reencode", "mq2", "num-queues=2, 2 vCPUs: convert --reencode",
     [["convert", "--reencode", "{in}", "{out}"]], COMPLETES, None, None),
    ("mq2-i386-to-stable", "mq2", "num-queues=2: --to-layout i386, then --to-layout stable",
     [["convert", "--to-layout", "i386", "{in}", "{out}.i386"],
      ["convert", "--to-layout", "stable", "{out}.i386", "{out}"]], COMPLETES, None, "{out}"),
    # Written by Debian's 32-bit QEMU (qemu-system-x86:i386, the same release) on this host:
    # genuine i386 elements.
    ("i386host-unconverted", "i386host",
     "written by 32-bit i386 QEMU (genuine 32,780-byte i386 elements), loaded as is",
     [], REFUSED, "virtio: error trying to map MMIO memory", None),
    ("i386host-to-stable", "i386host",
     "written by 32-bit i386 QEMU, then convert --from-layout auto --to-layout stable "
     "(and back to i386: equals what i386 QEMU wrote)",
     [["convert", "--from-layout", "auto", "--to-layout", "stable", "{in}", "{out}"],
      ["convert", "--to-layout", "i386", "{out}", "{out}.back"]], COMPLETES, None, "{out}.back"),
    # Written by Debian's big-endian QEMU (qemu-system-x86:s390x, the same release) under
    # user-mode emulation (qemu-s390x-static): genuine lp64-be elements.
    ("s390xhost-unconverted", "s390xhost",
     "written by big-endian s390x QEMU (genuine 49,168-byte lp64-be elements), loaded as is",
     [], REFUSED, "qemu_get_virtqueue_element: Assertion `ARRAY_SIZE(data.in_addr) >= data.in_num' failed",
     None),
    ("s390xhost-to-stable", "s390xhost",
     "written by big-endian s390x QEMU, then convert --from-layout auto --to-layout stable "
     "(and back to lp64-be: equals what s390x QEMU wrote)",
     [["convert", "--from-layout", "auto", "--to-layout", "stable", "{in}", "{out}"],
      ["convert", "--to-layout", "lp64-be", "{out}", "{out}.back"]], COMPLETES, None, "{out}.back"),
    ("packed-unchanged", "packed", "packed=on: the stream QEMU wrote, unchanged",
     [], REFUSED, "virtio: unexpected memory split", None),
    ("packed-ndescs-after", "packed", "packed=on: convert --packed-ndescs-after",
     [["convert", "--packed-ndescs-after", "{in}", "{out}"]], COMPLETES, None, None),
    # What a device saved about a request against the request: `vmstate check` finds each
    # (the Rust test asserts its rules); these rows record what QEMU does with them.
    ("split-edit-sector-past-end", "split",
     "guest memory edit: requests[0]'s header sector = 32760, so its 512 sectors end past the "
     "16 MiB disk",
     [GuestPoke(0, 8, (DISK_SIZE >> 9) - 8, 8)], FAILS, None, None),
    ("scsi-unchanged", "scsi", "virtio-scsi: the stream QEMU wrote, unchanged (control)",
     [], COMPLETES, None, None),
    ("scsi-reencode", "scsi", "virtio-scsi: convert --reencode",
     [["convert", "--reencode", "{in}", "{out}"]], COMPLETES, None, None),
    ("scsi-edit-cdb-lba", "scsi",
     "vmstate edit: the saved WRITE(10) of scsi_requests[0].requests[0] moved to LBA 24576",
     [ScsiCdbEdit(lambda cdb: with_lba(cdb, FAR_SECTOR), "LBA 24576")], COMPLETES, None, None),
    ("scsi-edit-cdb-read", "scsi",
     "vmstate edit: the saved command of scsi_requests[0].requests[0] turned into a READ(10)",
     [ScsiCdbEdit(lambda cdb: b"\x28" + cdb[1:], "READ(10)")],
     REFUSED, "virtio_scsi_load_request: Assertion `req->sreq->cmd.mode == req->mode' failed", None),
    ("scsi-edit-disk-sector", "scsi",
     "vmstate edit: scsi-disk's saved position of scsi_requests[0].requests[0] = sector 24576",
     [["edit", "{in}", "{out}", "--set", "scsi_requests[0].requests[0].disk.sector=%d" % FAR_SECTOR]],
     CORRUPT, None, None),
]
PIPE = ("split-live-pipe", "split",
        "live migration through filters: exec:vmstate convert --to-layout i386 - - "
        "| vmstate convert --to-layout stable - - into the destination's -incoming")


def run_scenario(suite, streams, scn):
    name, source, what, steps, expect, expect_error, equal = scn
    folder = os.path.join(suite.work, name)
    os.makedirs(folder, exist_ok=True)
    t0 = time.time()
    src_stream = streams[source]
    out = os.path.join(folder, "stream.mig") if steps else src_stream
    commands = []
    for step in steps:
        if callable(step):
            commands.append(step.describe())
            step(suite, src_stream, out)
            continue
        args = [a.replace("{in}", src_stream).replace("{out}", out) for a in step]
        commands.append("vmstate " + " ".join(shlex.quote(a.replace(folder + "/", "").replace(suite.work + "/", ""))
                                              for a in args))
        suite.vm(*args)
    r = {"name": name, "source": source, "what": what, "vmstate": commands, "expect": expect}
    r["check"] = suite.check(out)
    if equal:
        r["equals_source_stream"] = filecmp.cmp(equal.replace("{out}", out), src_stream, shallow=False)
    r.update(suite.destination(os.path.join(folder, "dst"), SOURCES[source],
                               "exec:cat %s" % shlex.quote(out), expect, expect_error))
    if equal:
        r["ok"] = r["ok"] and r["equals_source_stream"]
    r["seconds"] = round(time.time() - t0, 1)
    return r


def run_pipe(suite):
    name, source, what = PIPE
    folder = os.path.join(suite.work, name)
    os.makedirs(folder, exist_ok=True)
    t0 = time.time()
    fifo = os.path.join(folder, "pipe")
    os.mkfifo(fifo)
    src = SOURCES[source]
    q, facts = suite.source(os.path.join(folder, "src"), src)
    vm = shlex.quote(suite.vmstate)
    filt = "%s convert --to-layout i386 - - | %s convert --to-layout stable - - > %s" % (vm, vm, shlex.quote(fifo))
    result = {}

    def dst():
        result.update(suite.destination(os.path.join(folder, "dst"), src,
                                        "exec:cat %s" % shlex.quote(fifo), COMPLETES))
    t = threading.Thread(target=dst)
    t.start()
    try:
        q.migrate("exec:" + filt)
    finally:
        q.stop()
        t.join()
    r = {"name": name, "source": source, "what": what, "expect": COMPLETES,
         "vmstate": ["migrate \"exec:vmstate convert --to-layout i386 - - | vmstate convert --to-layout stable - - > PIPE\""],
         "source_facts": facts}
    r.update(result)
    r["seconds"] = round(time.time() - t0, 1)
    return r


def row_cells(r, done, failed, completes="yes"):
    """A result's cells in the results table (both suites'): QEMU loads?, does the guest
    complete (`completes` when it says `done`; the writes read back wrong after `failed`)?,
    expected (and whether it was met), and what QEMU said."""
    if r["loaded"]:
        loads = "yes (%s)" % r.get("runstate")
        if r.get("guest_result") == done:
            guest = completes
        elif r.get("guest_result") == failed:
            lines = r["serial"].splitlines()
            errors = [l.split()[1] for l in lines if " FAILED: " in l]
            bad = [w for w in (l.split()[1] for l in lines if l.endswith(" MISMATCH")) if w not in errors]
            guest = "; ".join(["%s ends with an I/O error in the guest" % ", ".join(errors)] * bool(errors)
                              + ["writes end, but %s wrong on disk" % ", ".join(bad)] * bool(bad))
        else:
            guest = "no (never ends)"
    else:
        code = r.get("qemu_exit")
        loads = "no (%s)" % ("SIGABRT" if code == -6 else "exit %s" % code)
        guest = "-"
    said = (r.get("qemu_error") or "").replace("\n", " / ").replace("|", "\\|") or "-"
    expected = r["expect"] + ("" if r["ok"] else ": **NOT MET**")
    return loads, guest, expected, said


def table(results):
    lines = ["| scenario | in flight at save | QEMU loads? | guest completes after `cont`? "
             "| expected | QEMU says |", "|---|---|---|---|---|---|"]
    for r in results:
        loads, done, expected, said = row_cells(r, DONE, FAILED)
        lines.append("| %s | %s | %s | %s | %s | %s |" % (r["name"], r["held"], loads, done, expected, said))
    return "\n".join(lines)


def add_run_args(ap):
    """--results, --jobs and --keep: the options both suites (this one, machines.py) take."""
    ap.add_argument("--results", help="write the results as JSON here")
    ap.add_argument("--jobs", type=int, default=2, help="QEMU runs at a time (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")


def failure(e, work, log=log):
    """The exit code for `e`, raised while the suite ran: 2 for a SetupError (with its reason),
    3 for anything else (a scenario broke down: say where, keep the work folder)."""
    if isinstance(e, SetupError):
        log("SETUP FAILED: %s" % e)
        return 2
    traceback.print_exc()
    log("the suite broke down (work folder kept: %s)" % work)
    return 3


def verdict(bad, work, a, log=log):
    """The exit code once the results are out: 1 when scenarios in `bad` did not meet their
    expectation (the work folder kept), else 0 (a temporary work folder removed unless --keep)."""
    if bad:
        log("UNEXPECTED: %s (work folder kept: %s)" % (", ".join(bad), work))
        return 1
    if not a.keep and not a.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vmstate", required=True, help="the vmstate binary")
    ap.add_argument("--assets", default=os.path.join(HERE, "../../../shared/corpus/assets"),
                    help="folder with bzImage and initramfs-tiny.cpio.gz (default: ../shared/corpus/assets)")
    ap.add_argument("--work", help="scratch folder (default: a new temporary folder, removed unless --keep)")
    add_run_args(ap)
    ap.add_argument("--i386-cache", help="where Debian's i386 QEMU is fetched and unpacked "
                    "(default: in the work folder); reused when already there")
    ap.add_argument("--no-i386-host", action="store_true",
                    help="do not fetch the i386 QEMU build nor run the streams it writes (says so)")
    ap.add_argument("--s390x-cache", help="where Debian's s390x QEMU is fetched and unpacked "
                    "(default: in the work folder); reused when already there")
    ap.add_argument("--no-s390x-host", action="store_true",
                    help="do not fetch the s390x QEMU build nor run the streams it writes (says so)")
    ap.add_argument("scenarios", nargs="*", help="only these (default: all)")
    a = ap.parse_args()
    t0 = time.time()
    work = a.work or tempfile.mkdtemp(prefix="vmstate-interop-")
    os.makedirs(work, exist_ok=True)
    work = os.path.abspath(work)
    wanted = [s for s in SCENARIOS if not a.scenarios or s[0] in a.scenarios]
    pipe = not a.scenarios or PIPE[0] in a.scenarios
    try:
        if not os.access(a.vmstate, os.X_OK):
            raise SetupError("vmstate binary not found: %s" % a.vmstate)
        ensure_qemu()
        version = subprocess.run([QEMU, "--version"], stdout=subprocess.PIPE).stdout.decode().splitlines()[0]
        log(version)
        kernel, initrd = prepare_guest(os.path.abspath(a.assets), work)
        hosts = {}
        if a.no_i386_host:
            log("NOTE: --no-i386-host: the streams written by 32-bit i386 QEMU are NOT tested")
            wanted = [s for s in wanted if s[1] != "i386host"]
        elif any(s[1] == "i386host" for s in wanted):
            hosts["i386"] = I386Qemu(os.path.abspath(a.i386_cache or os.path.join(work, "qemu-i386")))
            log(hosts["i386"].version)
        if a.no_s390x_host:
            log("NOTE: --no-s390x-host: the streams written by big-endian s390x QEMU are NOT tested")
            wanted = [s for s in wanted if s[1] != "s390xhost"]
        elif any(s[1] == "s390xhost" for s in wanted):
            ensure_qemu_user()
            hosts["s390x"] = S390xQemu(os.path.abspath(a.s390x_cache or os.path.join(work, "qemu-s390x")))
            log(hosts["s390x"].version)
        suite = Suite(os.path.abspath(a.vmstate), kernel, initrd, work, hosts)
        needed = sorted({s[1] for s in wanted})
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            recorded = dict(zip(needed, pool.map(lambda n: suite.record_source(n, SOURCES[n]), needed)))
        streams = {n: recorded[n][0] for n in needed}
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            futures = [pool.submit(run_scenario, suite, streams, s) for s in wanted]
            if pipe:
                futures.append(pool.submit(run_pipe, suite))
            results = [f.result() for f in futures]
        for r in results:
            facts = r.get("source_facts") or recorded[r["source"]][1]
            r["source_held"] = facts["held_per_queue"]
            r["source_dump"] = facts.get("vmstate_dump", [])
            r["source_qemu"] = facts.get("qemu", "x86-64 build")
            r["source_layouts"] = facts.get("vmstate_layouts", [])
            r["source_seconds"] = facts.get("source_seconds")
            r["held"] = "+".join(str(n) for n in facts["held_per_queue"])
    except Exception as e:
        return failure(e, work)
    seconds = round(time.time() - t0, 1)
    print(version)
    print(table(results))
    print("suite: %.0f s" % seconds)
    if a.results:
        with open(a.results, "w") as f:
            json.dump({"qemu": version, "seconds": seconds, "results": results}, f, indent=1)
    bad = [r["name"] for r in results if not r["ok"]]
    return verdict(bad, work, a)


if __name__ == "__main__":
    sys.exit(main())
