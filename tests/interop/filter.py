#!/usr/bin/env python3
"""A live migration through `vmstate convert - -`, against the same migration without it.

usage: filter.py --vmstate PATH --work DIR [--results FILE] [--assets DIR] [--qemu10 ROOT]
                 [--runs N] [--mem MIB] [--ways WAY,...] [--capture [--keep]]
                 [--no-tcg-workaround]

The corpus' tiny Linux guest (x86 q35, TCG, one vCPU, 256 MiB, a virtio-blk disk and a
virtio-rng) boots with this script's own /init: it fills 3/8 of its memory with random data,
keeps rewriting another 1/8 from shifting offsets of it, checks both, and prints a tick every
second on its serial console. While that runs, the guest migrates live to a second QEMU of
the same version on the same host (QEMU 7.2; with --qemu10 ROOT, bookworm-backports' QEMU
10.0 unpacked under ROOT as tests/machines/make-machine-corpus.sh leaves it), three ways:

  direct    source: migrate exec:cat > FIFO
  stable    source: migrate exec:VMSTATE convert --to-layout stable - - > FIFO
  reencode  source: migrate exec:VMSTATE convert --reencode - - > FIFO

Every way's destination is started with -incoming defer and then migrate-incoming
exec:python3 filter.py tap FIFO TRACE: a pipe copier that notes (CLOCK_MONOTONIC) when each
read reached the destination. So the three ways differ only in the process that writes into
the FIFO: cat, or the filter. The source runs with downtime-limit 300 ms and max-bandwidth
10 GiB/s, and the events capability on both sides.

Per run it records QEMU's "total-time" and "downtime" (query-migrate on the source), the
time from the source's STOP event to the destination's RESUME event as this script reads them
from both QMP sockets (polled together, time.monotonic()), the same span by QEMU's own event
timestamps, how long before the source's "completed" event the destination got its first
byte ("lead") and how long after it its last ("tail"). Each destination must be running
afterwards, and its guest must go on ticking, check its memory again and find it intact, with
no kernel oops. Ways alternate within each of --runs rounds.

--capture also puts `tee` before every way's writer (the same for all three, so timing moves
a little) and has the tap keep what it passed on; after the migration the stopped source
dumps its memory. What QEMU sent must hold that memory page for page, and what the
destination received must be what the writer makes of what QEMU sent: the same bytes for
cat, for the filter the bytes of the same conversion read from a file, with the same pages.

QEMU 7.2 under TCG loses guest writes in a live migration when pc.ram's size is a multiple
of 64 pages (see main()); its guest gets 64 KiB less than --mem unless --no-tcg-workaround.
Without the workaround a guest that breaks after a stream QEMU sent wrong (as --capture
shows) is put down to QEMU, not to the way.

Prints a table (medians, then every run) and notes, writes every figure to --results as
JSON. Exits 0 when every migration completed, every destination runs an intact guest, every
capture matched and the filtered destinations received bytes before their source finished;
1 when one did not; 2 when QEMU or the guest cannot be prepared. Timing figures are
reported, never judged.
"""
import argparse
import filecmp
import gzip
import json
import os
import select
import shlex
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interop import QMP, newc  # noqa: E402  (the suites' QMP client and cpio writer)
from ram import differing  # noqa: E402  (ELF cores compared as ram.py compares them)

HERE = os.path.dirname(os.path.abspath(__file__))
QEMU = "qemu-system-x86_64"
QEMU_TIMEOUT = 300
MIGRATION_TIMEOUT = 120
WAYS = {
    "direct": None,
    "stable": ["convert", "--to-layout", "stable", "-", "-"],
    "reencode": ["convert", "--reencode", "-", "-"],
}

# The guest's /init. The cold file is memory that the first RAM pass must carry; the hot
# region is rewritten from shifting offsets of it, so its pages keep being dirtied (with new
# contents) during the migration and later passes have work to do, while the dirty set stays
# bounded and the migration converges. The cold file's checksum is taken again and again, and
# every 32nd rewrite is compared with its source: a page that arrived wrong shows as BAD.
# Both live on a tmpfs of their own: the rootfs is capped at half the memory.
GUEST_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
cold=96 hot=32
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    filter.cold=*) cold=${arg#filter.cold=} ;;
    filter.hot=*) hot=${arg#filter.hot=} ;;
    esac
done
mkdir -p /mnt
mount -t tmpfs -o size=$((cold + hot + 8))m tmpfs /mnt
dd if=/dev/urandom of=/mnt/cold bs=1M count=$cold 2>/dev/null
dd if=/mnt/cold of=/mnt/hot bs=1M count=$hot 2>/dev/null
ref=$(md5sum < /mnt/cold)
echo "FILTER: READY cold=${cold}MiB hot=${hot}MiB"
(
    n=0
    while true; do
        dd if=/dev/vda of=/dev/null bs=4k count=1 skip=$((n % 1024)) iflag=direct 2>/dev/null
        dd if=/dev/hwrng of=/dev/null bs=16 count=1 2>/dev/null
        echo "FILTER: tick $n"
        n=$((n + 1))
        sleep 1
    done
) &
(
    k=0
    while true; do
        if [ "$(md5sum < /mnt/cold)" = "$ref" ]; then
            echo "FILTER: cold ok $k"
        else
            echo "FILTER: cold BAD $k"
        fi
        k=$((k + 1))
        sleep 2
    done
) &
span=$((cold - hot + 1))
p=0
while true; do
    s=$((p % span))
    dd if=/mnt/cold of=/mnt/hot bs=1M skip=$s count=$hot conv=notrunc 2>/dev/null
    if [ $((p % 32)) -eq 31 ]; then
        want=$(dd if=/mnt/cold bs=1M skip=$s count=$hot 2>/dev/null | md5sum)
        if [ "$(md5sum < /mnt/hot)" = "$want" ]; then
            echo "FILTER: hot ok $p"
        else
            echo "FILTER: hot BAD $p"
        fi
    fi
    p=$((p + 1))
done
"""


# What the guest prints when something under it went wrong: its kernel, or its shell.
GUEST_TROUBLE = ("Oops", "BUG:", "Kernel panic", "general protection", "can't open")


class SetupError(Exception):
    """QEMU or the guest cannot be prepared."""


def tap(fifo, trace, copy=None):
    """Copies the FIFO to standard output (the destination QEMU), noting when bytes came,
    and to `copy` too if given."""
    fd = os.open(fifo, os.O_RDONLY)
    opened = time.monotonic()
    first = last = None
    total = 0
    samples = []
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    keep = open(copy, "wb") if copy else None
    try:
        while True:
            n = os.readv(fd, [buf])
            now = time.monotonic()
            if n == 0:
                break
            if first is None:
                first = now
            last = now
            total += n
            samples.append((round(now, 6), total))
            done = 0
            while done < n:
                done += os.write(1, view[done:n])
            if keep:
                keep.write(view[:n])
    except BrokenPipeError:
        pass  # the destination stopped reading: its own status says why
    if keep:
        keep.close()
    with open(trace, "w") as f:
        json.dump({"opened": opened, "first": first, "last": last, "eof": time.monotonic(),
                   "bytes": total, "cpu": round(sum(os.times()[:2]), 3), "samples": samples}, f)


def prepare_guest(assets, work):
    kernel = os.path.join(assets, "bzImage")
    base = os.path.join(assets, "initramfs-tiny.cpio.gz")
    for f in (kernel, base):
        if not os.path.isfile(f):
            raise SetupError("the corpus guest is not in %s (%s)" % (assets, f))
    initrd = os.path.join(work, "initramfs-filter.cpio.gz")
    # The kernel unpacks concatenated archives in order: this /init replaces the corpus' one.
    with open(base, "rb") as f, open(initrd, "wb") as out:
        out.write(f.read())
        out.write(gzip.compress(newc([("init", 0o100755, GUEST_INIT.encode())]), mtime=0))
    return kernel, initrd


class Qemu:
    """One QEMU under `timeout` in `folder`: qemu.log, serial.log, qmp.sock."""

    def __init__(self, leg, folder, extra):
        os.makedirs(folder, exist_ok=True)
        self.serial = os.path.join(folder, "serial.log")
        sock = os.path.join(folder, "qmp.sock")
        if len(sock) > 100:
            raise SetupError("work folder path too long for a unix socket: %s" % sock)
        cmd = ["timeout", str(QEMU_TIMEOUT), leg["binary"]] + leg["extra"] + [
            "-nodefaults", "-machine", "q35", "-accel", "tcg", "-smp", "1",
            "-m", leg["ram"], "-display", "none",
            "-kernel", leg["kernel"], "-initrd", leg["initrd"],
            "-append", "console=ttyS0 panic=-1 loglevel=4 filter.cold=%d filter.hot=%d"
            % (leg["mem"] * 3 // 8, leg["mem"] // 8),
            "-drive", "file=%s,format=raw,if=none,id=disk0,file.locking=off" % leg["disk"],
            "-device", "virtio-blk-pci,drive=disk0,id=vblk0",
            "-device", "virtio-rng-pci,id=rng0",
            "-serial", "file:" + self.serial, "-qmp", "unix:%s,server=on,wait=off" % sock,
        ] + extra
        with open(os.path.join(folder, "cmdline"), "w") as f:
            f.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
        self.log = os.path.join(folder, "qemu.log")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=leg["env"])
        try:
            self.qmp = QMP(sock, self.proc)
        except (EOFError, OSError):
            self.proc.kill()
            self.proc.wait(10)
            raise SetupError("QEMU did not start: %s" % self.log_tail())

    def console(self):
        try:
            with open(self.serial, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self):
        with open(self.log, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-3:])

    def stop(self):
        try:
            self.qmp.cmd("quit")
        except (RuntimeError, EOFError, OSError):
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Watch:
    """Events of several QMP connections, each with the time.monotonic() it was read at.
    Nothing else may talk to these connections while it pumps: it takes every line for an
    event, and no command is pending."""

    def __init__(self, **conns):
        self.conns = conns
        self.events = {name: [] for name in conns}

    def _lines(self, name, now):
        q = self.conns[name]
        while b"\n" in q.buf:
            line, q.buf = q.buf.split(b"\n", 1)
            msg = json.loads(line)
            if "event" in msg:
                self.events[name].append((now, msg))

    def pump(self, timeout):
        for name in self.conns:
            self._lines(name, time.monotonic())
        by_sock = {q.s: name for name, q in self.conns.items()}
        ready, _, _ = select.select(list(by_sock), [], [], timeout)
        now = time.monotonic()
        for s in ready:
            name = by_sock[s]
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError("%s: QMP socket closed (QEMU exited)" % name)
            self.conns[name].buf += chunk
            self._lines(name, now)

    def first(self, name, event, status=None):
        """(monotonic time, QEMU's own timestamp in seconds) of the first such event."""
        for now, msg in self.events[name]:
            if msg["event"] == event and (status is None or msg["data"]["status"] == status):
                stamp = msg["timestamp"]
                return now, stamp["seconds"] + stamp["microseconds"] / 1e6
        return None


def wait_console(vm, text, seconds, since=0):
    """Waits until the console's output from offset `since` on contains `text`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in vm.console()[since:]:
            return True
        if vm.proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def ms(a, b):
    return None if a is None or b is None else round((b - a) * 1000, 1)


def boot_source(leg, folder):
    src = Qemu(leg, folder, [])
    if not wait_console(src, "FILTER: READY", 90):
        tail = src.console()[-400:]
        src.stop()
        raise SetupError("the guest did not come up on %s; serial: %r; QEMU: %s"
                         % (leg["name"], tail, src.log_tail()))
    # Some passes of the hot loop before migrating: the guest is busy, not booting.
    wait_console(src, "FILTER: cold ok 0", 30)
    return src


def migrate_once(a, leg, way, folder):
    """One live migration of a freshly booted guest; returns its figures."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    fifo = os.path.join(folder, "stream.fifo")
    trace = os.path.join(folder, "tap.json")
    err, rc = os.path.join(folder, "writer.stderr"), os.path.join(folder, "writer.rc")
    cpu = os.path.join(folder, "writer.times")
    os.mkfifo(fifo)
    sent, received = os.path.join(folder, "sent.mig"), os.path.join(folder, "received.mig")
    writer = " ".join(shlex.quote(w) for w in
                      (["cat"] if WAYS[way] is None else [a.vmstate] + WAYS[way]))
    if a.capture:
        writer = "tee %s | %s" % (shlex.quote(sent), writer)
    # `times` gives the writer's CPU time without putting anything between it and the FIFO.
    source_uri = "exec:%s 2>%s >%s; s=$?; times >%s; echo $s >%s" % (
        writer, shlex.quote(err), shlex.quote(fifo), shlex.quote(cpu), shlex.quote(rc))
    dest_uri = "exec:" + " ".join(shlex.quote(w) for w in [
        sys.executable, os.path.abspath(__file__), "tap", fifo, trace]
        + ([received] if a.capture else []))
    r = {"qemu": leg["name"], "way": way, "ram_size": leg["ram"], "source_uri": source_uri,
         "destination_uri": dest_uri}
    src = boot_source(leg, os.path.join(folder, "source"))
    dst = None
    try:
        dst = Qemu(leg, os.path.join(folder, "destination"), ["-incoming", "defer"])
        for vm in (src, dst):
            vm.qmp.cmd("migrate-set-capabilities",
                       capabilities=[{"capability": "events", "state": True}])
        src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 300,
                                                 "max-bandwidth": 10 << 30})
        dst.qmp.cmd("migrate-incoming", uri=dest_uri)
        src_ticks = ticks(src.console())
        watch = Watch(source=src.qmp, destination=dst.qmp)
        started = time.monotonic()
        src.qmp.cmd("migrate", uri=source_uri)
        deadline = started + MIGRATION_TIMEOUT
        failed = None
        while time.monotonic() < deadline:
            try:
                watch.pump(0.5)
            except EOFError as e:
                failed = str(e)
                break
            if watch.first("source", "MIGRATION", "failed"):
                failed = "the source's migration failed"
            elif watch.first("destination", "MIGRATION", "failed"):
                failed = "the destination's migration failed"
            if failed or (watch.first("source", "MIGRATION", "completed")
                          and watch.first("destination", "RESUME")):
                break
        else:
            failed = "no completion and RESUME within %d s" % MIGRATION_TIMEOUT
        info = ask(src, "query-migrate")
        r["source_status"] = info.get("status")
        r["failed"] = failed
        if failed and info.get("status") not in ("completed", "failed"):
            ask(src, "migrate_cancel")
        r["total_ms"] = info.get("total-time")
        r["qemu_downtime_ms"] = info.get("downtime")
        r["setup_ms"] = info.get("setup-time")
        ram = info.get("ram", {})
        r["ram"] = {k: ram.get(k) for k in ("total", "transferred", "duplicate", "normal",
                                             "dirty-sync-count", "mbps", "dirty-pages-rate")}
        stop = watch.first("source", "STOP")
        resume = watch.first("destination", "RESUME")
        done = watch.first("source", "MIGRATION", "completed")
        incoming = watch.first("destination", "MIGRATION", "active")
        r["stop_to_resume_ms"] = ms(stop and stop[0], resume and resume[0])
        r["stop_to_resume_qemu_clock_ms"] = ms(stop and stop[1], resume and resume[1])
        r["done_to_resume_ms"] = ms(done and done[0], resume and resume[0])
        r["migrate_to_stop_ms"] = ms(started, stop and stop[0])
        r["source_done_ms"] = ms(started, done and done[0])
        r["destination_active_ms"] = ms(started, incoming and incoming[0])
        r["destination_status"] = ask(dst, "query-status").get("status")
        r["destination_migration"] = ask(dst, "query-migrate").get("status")

        # The guest goes on: new ticks and a fresh check of its memory, on the destination.
        seen = len(dst.console())
        r["guest_ticking"] = wait_console(dst, "FILTER: tick", 15, seen)
        r["guest_checked"] = wait_console(dst, "FILTER: cold ok", 30, seen)
        console = dst.console()
        r["guest_bad"] = [l for l in (src.console() + console).splitlines()
                          if "BAD" in l or any(w in l for w in GUEST_TROUBLE)]
        after = ticks(console)
        r["ticks"] = {"source_before": src_ticks[-1] if src_ticks else None,
                      "destination_first": after[0] if after else None,
                      "destination_last": after[-1] if after else None}

        for _ in range(50):  # the tap and the writer's shell write these as they exit
            if os.path.exists(trace) and os.path.exists(rc):
                break
            time.sleep(0.1)
        tapped = read_json(trace)
        r["writer_exit"] = read_text(rc)
        r["writer_stderr"] = read_text(err)[-500:]
        r["writer_cpu_s"] = cpu_seconds(read_text(cpu))
        if tapped:
            r["tap_cpu_s"] = tapped.get("cpu")
        if tapped and tapped["first"] is not None and done:
            r["stream_bytes"] = tapped["bytes"]
            r["first_byte_ms"] = ms(started, tapped["first"])
            r["lead_ms"] = ms(tapped["first"], done[0])
            r["tail_ms"] = ms(done[0], tapped["last"])
            before = [b for t, b in tapped["samples"] if t <= done[0]]
            r["bytes_before_source_done"] = before[-1] if before else 0
        r["received_before_source_done"] = (r.get("lead_ms") or 0) > 0
        if a.capture and r["source_status"] == "completed":
            # Stopped since its STOP event: what it holds now is what it had to send.
            ask(src, "dump-guest-memory", paging=False,
                protocol="file:" + os.path.join(folder, "source.elf"))
        if not (r["source_status"] == "completed" and r["destination_status"] == "running"):
            r["source_qemu"] = src.log_tail()
            r["destination_qemu"] = dst.log_tail()
    finally:
        src.stop()
        if dst:
            dst.stop()
        release(fifo)
    if a.capture:
        r["capture"] = captured(a, way, folder, sent, received)
    guest_ok = r["guest_ticking"] and r["guest_checked"] and not r["guest_bad"]
    # QEMU before 9.0 can lose guest writes under TCG (its dirty bitmap sync leaves TLB
    # entries that write without marking pages dirty): when the stream QEMU sent already
    # differs from the memory it stopped with, what becomes of the guest says nothing of
    # the filter, and is recorded as QEMU's.
    r["qemu_lost_writes"] = bool(r.get("capture")) and r["capture"]["sent_pages_different"] > 0
    r["ok"] = (not r["failed"] and r["source_status"] == "completed"
               and r["destination_migration"] == "completed"
               and r["destination_status"] == "running"
               and r["writer_exit"] == "0"
               and (WAYS[way] is None or r["received_before_source_done"])
               and (not r.get("capture") or r["capture"]["delivered_intact"])
               and (guest_ok or r["qemu_lost_writes"]))
    return r


def captured(a, way, folder, sent, received):
    """What QEMU sent against the memory it stopped with, and what the destination received
    against what the writer had to make of what QEMU sent. Removes the big files after."""
    c = {}
    dump = os.path.join(folder, "source.elf")
    sent_elf = os.path.join(folder, "sent.elf")
    try:
        subprocess.run([a.vmstate, "ram", "extract", "--format", "elf", sent, sent_elf],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pages, different, at = differing(dump, sent_elf)
        c.update(sent_pages=pages, sent_pages_different=different, sent_different_at=at)
        if WAYS[way] is None:
            c["delivered_intact"] = filecmp.cmp(sent, received, shallow=False)
        else:
            # The same conversion of the same stream read from a file: the filter's output must
            # not depend on how its input arrived.
            expected = os.path.join(folder, "expected.mig")
            subprocess.run([a.vmstate] + WAYS[way][:-2] + [sent, expected], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            c["received_equals_conversion"] = filecmp.cmp(expected, received, shallow=False)
            received_elf = os.path.join(folder, "received.elf")
            subprocess.run([a.vmstate, "ram", "extract", "--format", "elf", received,
                            received_elf], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
            pages, different, at = differing(sent_elf, received_elf)
            c["received_pages_different_from_sent"] = different
            c["delivered_intact"] = c["received_equals_conversion"] and different == 0 and pages > 0
    except (subprocess.CalledProcessError, OSError) as e:
        said = (getattr(e, "stderr", None) or b"").decode(errors="replace")
        c["error"] = "%s: %s" % (e, said[-300:])
        c.setdefault("sent_pages_different", 0)
        c["delivered_intact"] = False
    if not a.keep:
        for name in ("sent.mig", "received.mig", "expected.mig", "source.elf", "sent.elf",
                     "received.elf"):
            try:
                os.remove(os.path.join(folder, name))
            except FileNotFoundError:
                pass
    return c


def ask(vm, name, **args):
    """A QMP command's answer, or {} from a QEMU that has gone or refuses: the run records
    what it could and fails on what is missing."""
    try:
        return vm.qmp.cmd(name, **args)
    except (EOFError, OSError, RuntimeError):
        return {}


def release(fifo):
    """Ends a writer or tap still waiting to open the FIFO (a run that failed before both
    ends met): each blocked open completes against ours, then sees the other end gone."""
    try:
        r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        w = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(w)
        os.close(r)
    except OSError:
        pass


def ticks(console):
    out = []
    for line in console.splitlines():
        if line.startswith("FILTER: tick "):
            try:
                out.append(int(line.split()[2]))
            except (IndexError, ValueError):
                pass
    return out


def cpu_seconds(times):
    """User plus system time of the shell's children, from `times` ("0m0.12s 0m0.03s" on
    its second line)."""
    lines = times.splitlines()
    try:
        total = 0.0
        for t in lines[1].split():
            minutes, seconds = t.rstrip("s").split("m")
            total += int(minutes) * 60 + float(seconds)
        return round(total, 3)
    except (IndexError, ValueError):
        return None


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


FIGURES = ("total_ms", "qemu_downtime_ms", "stop_to_resume_ms", "stop_to_resume_qemu_clock_ms",
           "done_to_resume_ms", "lead_ms", "tail_ms")
SHOWN = (("total ms", "total_ms"), ("qemu downtime ms", "qemu_downtime_ms"),
         ("stop-to-resume ms", "stop_to_resume_ms"), ("done-to-resume ms", "done_to_resume_ms"),
         ("first-byte lead ms", "lead_ms"), ("tail ms", "tail_ms"))


def summary(leg_name, way, runs):
    s = {"name": "%s/%s" % (leg_name, way), "qemu": leg_name, "way": way, "runs": runs,
         "ok": all(r["ok"] for r in runs), "median": {}, "all": {}}
    for key in FIGURES:
        values = [r.get(key) for r in runs]
        s["all"][key] = values
        known = [v for v in values if v is not None]
        s["median"][key] = statistics.median(known) if known else None
    return s


def table(results):
    def cell(v):
        return "-" if v is None else ("%.0f" % v)
    head = ("qemu", "way", "ok") + tuple(title for title, _ in SHOWN)
    rows = [head]
    for s in results:
        m, every = s["median"], s["all"]
        rows.append((s["qemu"], s["way"], "yes" if s["ok"] else "NO")
                    + tuple("%s [%s]" % (cell(m[k]), " ".join(cell(v) for v in every[k]))
                            for _, k in SHOWN))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    notes = ["(median [every run]; done: the source's \"completed\"; lead: the destination's "
             "first byte before it; tail: its last byte after it)"]
    for s in results:
        for r in s["runs"]:
            what = []
            if r.get("qemu_lost_writes"):
                what.append("QEMU sent %d pages unlike its memory at the stop"
                            % r["capture"]["sent_pages_different"])
            if r.get("capture") and not r["capture"]["delivered_intact"]:
                what.append("the destination did not receive what the writer had to make")
            if r["guest_bad"]:
                what.append("guest: " + " | ".join(r["guest_bad"][:2]))
            if not r["ok"] and not what:
                what.append(r["failed"] or "see the results file")
            if what:
                notes.append("NOTE %s run %d: %s" % (s["name"], r["run"], "; ".join(what)))
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:] + notes)


def main():
    if sys.argv[1:2] == ["tap"]:
        tap(*sys.argv[2:5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vmstate", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results")
    ap.add_argument("--assets", default=os.path.join(HERE, "../../../shared/corpus/assets"))
    ap.add_argument("--qemu10", help="root of an unpacked QEMU 10.0: measure on it instead of 7.2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mem", type=int, default=256, help="guest RAM in MiB")
    ap.add_argument("--no-tcg-workaround", dest="tcg_workaround", action="store_false",
                    help="give QEMU 7.2's guest exactly --mem (and QEMU's lost writes a chance)")
    ap.add_argument("--ways", default=",".join(WAYS))
    ap.add_argument("--capture", action="store_true",
                    help="keep what QEMU sent and what the destination received, and compare "
                    "them with the source's memory and with the same conversion from a file "
                    "(adds a tee to every way's writer)")
    ap.add_argument("--keep", action="store_true", help="with --capture: keep the captured files")
    a = ap.parse_args()
    ways = a.ways.split(",")
    if any(w not in WAYS for w in ways):
        ap.error("ways are %s" % ", ".join(WAYS))
    a.vmstate = os.path.abspath(a.vmstate)
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    legs = []
    try:
        if not os.access(a.vmstate, os.X_OK):
            raise SetupError("no vmstate binary at %s" % a.vmstate)
        kernel, initrd = prepare_guest(os.path.abspath(a.assets), work)
        disk = os.path.join(work, "disk.raw")
        with open(disk, "wb") as f:
            f.truncate(16 << 20)
        common = {"kernel": kernel, "initrd": initrd, "disk": disk, "mem": a.mem}
        if not a.qemu10:
            if shutil.which(QEMU) is None:
                raise SetupError("%s is not installed" % QEMU)
            # QEMU 7.2's dirty bitmap sync takes a fast path for a RAM block whose size is a
            # multiple of 64 pages, and on that path leaves TCG's TLB as it was: stores through
            # entries made while a page was dirty go on without marking it, and the stream
            # misses them. 64 KiB less sends pc.ram down the per-page path, which is correct.
            ram = "%dk" % (a.mem * 1024 - 64) if a.tcg_workaround else "%dM" % a.mem
            legs.append(dict(common, name="qemu7.2", binary=QEMU, env=None, extra=[], ram=ram))
        else:
            root = os.path.abspath(a.qemu10)
            binary = os.path.join(root, "usr/bin/qemu-system-x86_64")
            if not os.path.exists(binary):
                raise SetupError("no QEMU 10.0 under %s" % root)
            env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(root, "usr/lib/x86_64-linux-gnu"))
            extra = ["-L", "/usr/share/seabios", "-L", os.path.join(root, "usr/share/qemu")]
            legs.append(dict(common, name="qemu10.0", binary=binary, env=env, extra=extra,
                             ram="%dM" % a.mem))
        results = []
        for leg in legs:
            runs = {w: [] for w in ways}
            for i in range(a.runs):
                for way in ways:
                    folder = os.path.join(work, leg["name"], "%s-%d" % (way, i + 1))
                    r = migrate_once(a, leg, way, folder)
                    r["run"] = i + 1
                    runs[way].append(r)
                    print(json.dumps({k: r[k] for k in ("qemu", "way", "run", "ok") + FIGURES
                                      if k in r}), file=sys.stderr, flush=True)
            results += [summary(leg["name"], w, runs[w]) for w in ways]
    except (SetupError, EOFError, OSError, RuntimeError) as e:
        print("SETUP FAILED: %s" % e, file=sys.stderr)
        return 2
    if a.results:
        with open(a.results, "w") as f:
            json.dump({"results": results}, f, indent=1)
    print(table(results))
    return 0 if all(s["ok"] for s in results) else 1


if __name__ == "__main__":
    sys.exit(main())
