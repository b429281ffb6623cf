#!/usr/bin/env python3
"""Guest memory out of a stream, against QEMU's own dump of the same paused guest.

usage: ram.py --vmstate PATH --work DIR [--results FILE] [--assets DIR] [--qemu10 ROOT]

The corpus' tiny Linux guest boots under TCG on QEMU 7.2 (x86 q35, 128 MiB); once it is
up the VM is stopped, QEMU writes `dump-guest-memory` (ELF, no paging) and then migrates
to a file. With --qemu10 (bookworm-backports' QEMU 10.0 unpacked under ROOT, as
tests/machines/make-machine-corpus.sh leaves it), the same again on QEMU 10.0 with the
mapped-ram capability, migrating to a `file:` URI: each page at a fixed offset; that leg also
converts between RAM layouts (mapped-ram to page records, page records to mapped-ram, a
libvirt "sparse" image to a bare stream) and has QEMU 10.0 load each result and dump its
memory. `vmstate ram extract --format elf` of each stream is compared with QEMU's dump
page by page at every guest-physical address QEMU's dump covers; `--by block` is compared
with the ELF output for pc.ram. The results (pages compared, equal, different, and the
differing ranges) go to --results as JSON. Exits 0 when every page QEMU dumped is equal,
1 when one is not, 2 when QEMU or the guest cannot be prepared.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interop import QMP  # noqa: E402  (the suites' one QMP client)

HERE = os.path.dirname(os.path.abspath(__file__))
QEMU = "qemu-system-x86_64"
PAGE = 4096


def loads(path):
    """(paddr, file offset, size) of every PT_LOAD of an ELF64 core."""
    with open(path, "rb") as f:
        head = f.read(64)
        endian = "<" if head[5] == 1 else ">"
        phoff, = struct.unpack(endian + "Q", head[32:40])
        phnum, = struct.unpack(endian + "H", head[56:58])
        f.seek(phoff)
        out = []
        for _ in range(phnum):
            p_type, _, off, _, paddr, filesz, _, _ = struct.unpack(endian + "IIQQQQQQ", f.read(56))
            if p_type == 1:
                out.append((paddr, off, filesz))
        return out


def run(a, work, kernel, initrd, name, qemu, env, extra, mapped):
    """One leg: boot, stop, dump-guest-memory, migrate; compare `ram extract` with the dump.
    With mapped-ram, also the conversions between RAM layouts, each loaded back."""
    folder = os.path.join(work, name)
    os.makedirs(folder, exist_ok=True)
    sock, serial = os.path.join(folder, "qmp.sock"), os.path.join(folder, "serial.log")
    dump, stream, ours = (os.path.join(folder, n) for n in ("qemu-dump.elf", "stream.mig", "vmstate.elf"))
    log = open(os.path.join(folder, "qemu.log"), "wb")
    p = subprocess.Popen(["timeout", "300", qemu] + extra + [
                          "-nodefaults", "-machine", "q35", "-accel", "tcg",
                          "-m", "128", "-display", "none", "-kernel", kernel, "-initrd", initrd,
                          "-append", "console=ttyS0 panic=-1 loglevel=4", "-serial", "file:" + serial,
                          "-qmp", "unix:%s,server=on,wait=off" % sock],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    q = QMP(sock, p)
    time.sleep(8)  # the guest boots into its initramfs: its memory is no longer all zero
    q.cmd("stop")
    q.cmd("dump-guest-memory", paging=False, protocol="file:" + dump)
    if not mapped:
        q.cmd("migrate", uri="exec:cat > " + stream)
        wait_migration(q, stream)
    else:
        migrate(q, "file:" + stream, True)
    q.cmd("quit")
    p.wait(30)
    r = compare(a, folder, dump, stream, ours, name)
    if mapped:
        r["layouts"] = layouts(a, folder, qemu, env, extra, kernel, initrd, dump, stream)
        r["ok"] = r["ok"] and all(leg["ok"] for leg in r["layouts"])
    return r


def migrate(q, uri, mapped):
    """Migrates with the mapped-ram capability on or off (QEMU 9.0 and later)."""
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": "mapped-ram", "state": mapped}])
    q.cmd("migrate", uri=uri)
    wait_migration(q, uri)


def wait_migration(q, uri):
    while True:
        status = q.cmd("query-migrate").get("status")
        if status == "completed":
            return
        if status == "failed":
            raise RuntimeError("migration to %s failed" % uri)
        time.sleep(0.2)


def libvirt_prefix():
    """A libvirt save image header (v2, format 6 "sparse") and its XML, padded as libvirt
    pads it (64 KiB more than the XML): what `virsh save` with save_image_format "sparse"
    writes before QEMU's stream."""
    xml = (b"<domain type='qemu'><name>ram-interop</name>"
           b"<uuid>2b7e1516-28ae-d2a6-abf7-158809cf4f3c</uuid></domain>\0")
    data_len = len(xml) + 64 * 1024
    head = b"LibvirtQemudSave" + struct.pack("<5I", 2, data_len, 0, 6, 0) + bytes(56)
    return head + xml + bytes(data_len - len(xml))


LIBVIRT_PREFIX = libvirt_prefix()


def load(folder, name, qemu, env, extra, kernel, initrd, uri, mapped, then=None):
    """Starts QEMU with -incoming defer, loads `uri` and dumps the guest's memory, then
    migrates the loaded, still stopped guest to `then` (uri, mapped-ram) if given: a QEMU
    migrates only once, so each new stream of the same guest comes from a destination.
    Returns the dump's path, or the error QEMU gave."""
    sock = os.path.join(folder, name + ".qmp")
    dump = os.path.join(folder, name + ".qemu-dump.elf")
    log = open(os.path.join(folder, name + ".qemu.log"), "wb")
    p = subprocess.Popen(["timeout", "300", qemu] + extra + [
                          "-nodefaults", "-machine", "q35", "-accel", "tcg", "-S",
                          "-m", "128", "-display", "none", "-kernel", kernel, "-initrd", initrd,
                          "-append", "console=ttyS0 panic=-1 loglevel=4", "-serial", "null",
                          "-incoming", "defer", "-qmp", "unix:%s,server=on,wait=off" % sock],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        q = QMP(sock, p)
        q.cmd("migrate-set-capabilities",
              capabilities=[{"capability": "mapped-ram", "state": mapped}])
        q.cmd("migrate-incoming", uri=uri)
        deadline = time.time() + 240
        while q.cmd("query-status").get("status") == "inmigrate":
            if time.time() > deadline:
                raise RuntimeError("the load did not finish")
            time.sleep(0.2)
        status = q.cmd("query-migrate").get("status")
        if status != "completed":
            raise RuntimeError("incoming migration %s" % status)
        q.cmd("dump-guest-memory", paging=False, protocol="file:" + dump)
        if then:
            migrate(q, *then)
        q.cmd("quit")
        p.wait(30)
        return dump, None
    except (RuntimeError, EOFError, OSError) as e:
        p.kill()
        p.wait(30)
        with open(os.path.join(folder, name + ".qemu.log"), "rb") as f:
            tail = f.read().decode(errors="replace").strip().splitlines()[-3:]
        return None, "%s; QEMU: %s" % (e, " | ".join(tail))


def differing(want, got):
    """(pages, different pages, the first differing guest-physical addresses) of every
    PT_LOAD of ELF core `want`, looked up in `got`; a page `got` lacks counts as different."""
    theirs, mine = loads(want), loads(got)
    pages = different = 0
    at = []
    with open(want, "rb") as fw, open(got, "rb") as fg:
        for paddr, off, size in theirs:
            for k in range(0, size, PAGE):
                pages += 1
                fw.seek(off + k)
                page = fw.read(min(PAGE, size - k))
                place = next((o + paddr + k - pa for pa, o, sz in mine
                              if pa <= paddr + k < pa + sz), None)
                if place is not None:
                    fg.seek(place)
                    if fg.read(len(page)) == page:
                        continue
                different += 1
                if len(at) < 16:
                    at.append(hex(paddr + k))
    return pages, different, at


def same_memory(want, got):
    """(pages, equal) over every PT_LOAD of QEMU's dump `want`, looked up in dump `got`."""
    pages, different, _ = differing(want, got)
    return pages, pages - different


def layouts(a, folder, qemu, env, extra, kernel, initrd, dump, stream):
    """Each conversion between RAM layouts, loaded by QEMU 10.0, holds the guest's memory.
    The destinations of the first two write the next sources: QEMU's own ordinary stream of
    the guest, and libvirt's "sparse" save image of it (mapped-ram after libvirt's header
    and XML, which Debian's libvirt 9.0 cannot write itself)."""
    ordinary = os.path.join(folder, "ordinary.mig")
    sparse = os.path.join(folder, "sparse.img")
    steps = [
        ("mapped-ram-to-ordinary", ["--ram-layout", "ordinary", stream], False,
         ("exec:cat > " + ordinary, False)),
        ("ordinary-to-mapped-ram", ["--ram-layout", "mapped-ram", ordinary], True,
         ("file:%s,offset=%d" % (sparse, len(LIBVIRT_PREFIX)), True)),
        ("sparse-image-to-stream", ["--to", "stream", sparse], True, None),
        ("sparse-image-to-ordinary", ["--to", "stream", "--ram-layout", "ordinary", sparse],
         False, None),
    ]
    out = []
    for name, args, mapped, then in steps:
        if name.startswith("sparse-image") and os.path.exists(sparse):
            with open(sparse, "r+b") as f:
                if f.read(16) != LIBVIRT_PREFIX[:16]:
                    f.seek(0)
                    f.write(LIBVIRT_PREFIX)
        converted = os.path.join(folder, name + ".mig")
        c = subprocess.run([a.vmstate, "convert"] + args + [converted],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        leg = {"name": name, "convert_exit": c.returncode,
               "convert_stderr": c.stderr.decode(errors="replace").strip()[-300:]}
        if c.returncode == 0:
            uri = "file:" + converted if mapped else "exec:cat " + converted
            got, error = load(folder, name, qemu, env, extra, kernel, initrd, uri, mapped, then)
            leg["qemu_error"] = error
            if got:
                leg["pages"], leg["equal"] = same_memory(dump, got)
        leg["ok"] = leg.get("pages", 0) > 0 and leg.get("equal") == leg.get("pages")
        out.append(leg)
        print(json.dumps(leg))
    # The sparse image as vmstate reads it: the same memory as QEMU's dump.
    if os.path.exists(sparse):
        leg = compare(a, folder, dump, sparse, os.path.join(folder, "sparse.vmstate.elf"),
                      "sparse-image-extract", blocks_dir="sparse-blocks")
        d = subprocess.run([a.vmstate, "dump", sparse], stdout=subprocess.PIPE)
        leg["container"] = next((l for l in d.stdout.decode(errors="replace").splitlines()
                                 if l.startswith("container: ")), "")
        leg["ok"] = leg["ok"] and "stream sparse" in leg["container"]
        out.append({k: v for k, v in leg.items() if k not in ("qemu_loads", "vmstate_loads")})
    else:
        out.append({"name": "sparse-image-extract", "ok": False, "error": "no sparse image"})
    return out


def compare(a, folder, dump, stream, ours, name, blocks_dir="blocks"):
    t0 = time.time()
    subprocess.run([a.vmstate, "ram", "extract", "--format", "elf", stream, ours], check=True,
                   stdout=subprocess.DEVNULL)
    blocks = os.path.join(folder, blocks_dir)
    subprocess.run([a.vmstate, "ram", "extract", stream, blocks], check=True, stdout=subprocess.DEVNULL)
    seconds = round(time.time() - t0, 2)
    theirs, mine = loads(dump), loads(ours)
    r = {"name": name, "qemu_loads": theirs, "vmstate_loads": mine, "pages": 0, "equal": 0,
         "different": 0, "not_in_vmstate": 0, "differing_ranges": [], "extract_seconds": seconds}
    with open(dump, "rb") as fq, open(ours, "rb") as fv:
        for paddr, off, size in theirs:
            for k in range(0, size, PAGE):
                gpa = paddr + k
                r["pages"] += 1
                fq.seek(off + k)
                want = fq.read(min(PAGE, size - k))
                place = next((o + gpa - pa for pa, o, sz in mine if pa <= gpa < pa + sz), None)
                if place is None:
                    r["not_in_vmstate"] += 1
                    continue
                fv.seek(place)
                if fv.read(len(want)) == want:
                    r["equal"] += 1
                else:
                    r["different"] += 1
                    if r["differing_ranges"] and r["differing_ranges"][-1][1] == gpa:
                        r["differing_ranges"][-1][1] = gpa + PAGE
                    else:
                        r["differing_ranges"].append([gpa, gpa + PAGE])
        # --by block: pc.ram's file is the ELF's first PT_LOAD from address 0 on.
        with open(os.path.join(blocks, "pc.ram"), "rb") as fb:
            pa, o, sz = mine[0]
            fv.seek(o)
            r["block_file_equals_elf"] = pa == 0 and fb.read() == fv.read(sz)
    d = subprocess.run([a.vmstate, "dump", stream], stdout=subprocess.PIPE)
    r["dump_exit"] = d.returncode
    r["capabilities"] = next((l for l in d.stdout.decode(errors="replace").splitlines()
                              if l.startswith("configuration: ")), "")
    r["ok"] = (r["different"] == 0 and r["not_in_vmstate"] == 0 and r["pages"] > 0
               and r["block_file_equals_elf"] and r["dump_exit"] == 0)
    print(json.dumps({k: v for k, v in r.items() if k not in ("qemu_loads", "vmstate_loads")}))
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vmstate", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results")
    ap.add_argument("--assets", default=os.path.join(HERE, "../../../shared/corpus/assets"))
    ap.add_argument("--qemu10", help="root of an unpacked QEMU 10.0: also a mapped-ram leg")
    a = ap.parse_args()
    if shutil.which(QEMU) is None:
        print("SETUP FAILED: %s is not installed" % QEMU, file=sys.stderr)
        return 2
    kernel = os.path.join(a.assets, "bzImage")
    initrd = os.path.join(a.assets, "initramfs-tiny.cpio.gz")
    if not (os.path.exists(kernel) and os.path.exists(initrd)):
        print("SETUP FAILED: the corpus guest is not in %s" % a.assets, file=sys.stderr)
        return 2
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    results = [run(a, work, kernel, initrd, "qemu7.2", QEMU, None, [], False)]
    if a.qemu10:
        root = os.path.abspath(a.qemu10)
        binary = os.path.join(root, "usr/bin/qemu-system-x86_64")
        if not os.path.exists(binary):
            print("SETUP FAILED: no QEMU 10.0 under %s" % root, file=sys.stderr)
            return 2
        env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(root, "usr/lib/x86_64-linux-gnu"))
        extra = ["-L", "/usr/share/seabios", "-L", os.path.join(root, "usr/share/qemu")]
        results.append(run(a, work, kernel, initrd, "qemu10.0-mapped-ram", binary, env, extra, True))
    if a.results:
        with open(a.results, "w") as f:
            json.dump({"results": results}, f, indent=1)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
