#!/usr/bin/env python3
"""libvirt save images written by `virsh save`, read and rewritten by vmstate, restored by
`virsh restore`.

usage: libvirt.py --vmstate PATH --work DIR [--results FILE] [--assets DIR] [FORMAT ...]

Runs Debian's libvirt daemon itself (as root: `libvirtd -d`, with qemu.conf set to run QEMU
as root, no security driver, no cgroup controllers, QEMU's output to files), and for each
`save_image_format` (raw, gzip, bzip2, xz, lzop: what libvirt 9.0 writes; the daemon
restarted between them)
starts a TCG domain booting the corpus' tiny guest, saves it with `virsh save`, and then:
`vmstate dump` must name the container and its format, `vmstate check` must pass, `vmstate
convert` must write an image whose stream is the same stream (compared through `convert --to
stream`) with the same header and domain XML, and `virsh restore` of that output must bring
the domain back running. Results go to --results as JSON. Exits 0 when every format passed, 1
when one did not, 2 when libvirt cannot be prepared (the reason on stderr).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

# Debian 12's libvirt 9.0 knows these; zstd came in a later release (it refuses the format),
# so zstd images are covered by the fixture made with the zstd tool instead.
FORMATS = ["raw", "gzip", "bzip2", "xz", "lzop"]
CONF = "/etc/libvirt/qemu.conf"
URI = "qemu:///system"
NAME = "vmstate-interop"

DOMAIN = """<domain type='qemu'>
  <name>%(name)s</name>
  <uuid>3d1f6a0e-5b7c-4e2a-9f11-2c8d4e6b7a90</uuid>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>%(kernel)s</kernel>
    <initrd>%(initrd)s</initrd>
    <cmdline>console=ttyS0 panic=-1 loglevel=4</cmdline>
  </os>
  <features><acpi/></features>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>%(qemu)s</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='%(disk)s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='%(serial)s'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def log(msg):
    print("[libvirt] " + msg, file=sys.stderr, flush=True)


def virsh(*args, check=True):
    p = subprocess.run(["virsh", "-c", URI] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=180)
    if check and p.returncode != 0:
        raise RuntimeError("virsh %s: %s" % (" ".join(args), p.stderr.decode(errors="replace")))
    return p.stdout.decode(errors="replace").strip()


def stop_daemon():
    for name in ("libvirtd",):
        subprocess.run(["pkill", "-x", name], stderr=subprocess.DEVNULL)
    for _ in range(50):
        if subprocess.run(["pgrep", "-x", "libvirtd"], stdout=subprocess.DEVNULL).returncode != 0:
            return
        time.sleep(0.1)


def start_daemon(fmt):
    with open(CONF, "w") as f:
        f.write('user = "root"\ngroup = "root"\ndynamic_ownership = 0\nsecurity_driver = "none"\n'
                'cgroup_controllers = [ ]\nstdio_handler = "file"\nsave_image_format = "%s"\n' % fmt)
    stop_daemon()
    subprocess.run(["libvirtd", "-d"], check=True)
    for _ in range(100):
        if subprocess.run(["virsh", "-c", URI, "version"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("libvirtd did not answer")


def vm(vmstate, *args):
    return subprocess.run([vmstate] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_format(vmstate, work, assets, fmt):
    folder = os.path.join(work, fmt)
    os.makedirs(folder, exist_ok=True)
    disk = os.path.join(folder, "disk.raw")
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    xml = os.path.join(folder, "domain.xml")
    with open(xml, "w") as f:
        f.write(DOMAIN % {"name": NAME, "kernel": os.path.join(assets, "bzImage"),
                          "initrd": os.path.join(assets, "initramfs-tiny.cpio.gz"),
                          "qemu": shutil.which("qemu-system-x86_64"), "disk": disk,
                          "serial": os.path.join(folder, "serial.log")})
    r = {"format": fmt}
    start_daemon(fmt)
    virsh("destroy", NAME, check=False)
    virsh("create", xml)
    time.sleep(5)  # the guest boots into its initramfs
    image = os.path.join(folder, "save.img")
    t0 = time.time()
    virsh("save", NAME, image)
    r["save_seconds"] = round(time.time() - t0, 1)
    r["image_bytes"] = os.path.getsize(image)
    d = vm(vmstate, "dump", image)
    r["dump_exit"] = d.returncode
    r["container"] = next((l for l in d.stdout.decode(errors="replace").splitlines()
                           if l.startswith("container: ")), d.stderr.decode(errors="replace"))
    r["check_exit"] = vm(vmstate, "check", image).returncode
    out = os.path.join(folder, "converted.img")
    c = vm(vmstate, "convert", image, out)
    r["convert_exit"] = c.returncode
    r["convert_stderr"] = c.stderr.decode(errors="replace").strip()
    if c.returncode == 0:
        a, b = os.path.join(folder, "original.mig"), os.path.join(folder, "converted.mig")
        vm(vmstate, "convert", "--to", "stream", image, a)
        vm(vmstate, "convert", "--to", "stream", out, b)
        r["same_stream"] = os.path.exists(a) and os.path.exists(b) and open(a, "rb").read() == open(b, "rb").read()
        with open(image, "rb") as f1, open(out, "rb") as f2:
            head = json.loads(vm(vmstate, "dump", "--json", image).stdout)["envelope"]
            n = 92 + head["data_len"]
            r["same_header_and_xml"] = f1.read(n) == f2.read(n)
        rs = subprocess.run(["virsh", "-c", URI, "restore", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=180)
        r["restore_exit"] = rs.returncode
        r["restore_stderr"] = rs.stderr.decode(errors="replace").strip()
        time.sleep(1)
        r["state_after_restore"] = virsh("domstate", NAME, check=False)
    virsh("destroy", NAME, check=False)
    r["ok"] = (r["dump_exit"] == 0 and ("stream %s at offset" % fmt) in r["container"]
               and r["check_exit"] == 0 and r["convert_exit"] == 0 and r.get("same_stream")
               and r.get("same_header_and_xml") and r.get("restore_exit") == 0
               and r.get("state_after_restore") == "running")
    log("%s: %s" % (fmt, "ok" if r["ok"] else "FAILED %s" % json.dumps(r)))
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vmstate", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results")
    ap.add_argument("--assets", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                     "../../../shared/corpus/assets"))
    ap.add_argument("formats", nargs="*")
    a = ap.parse_args()
    missing = [t for t in ("libvirtd", "virsh", "qemu-system-x86_64") if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        print("SETUP FAILED: %s" % ("not root (libvirtd runs as root here)" if not missing
                                     else "not installed: " + ", ".join(missing)), file=sys.stderr)
        return 2
    assets = os.path.abspath(a.assets)
    if not os.path.exists(os.path.join(assets, "bzImage")):
        print("SETUP FAILED: the corpus guest is not in %s" % assets, file=sys.stderr)
        return 2
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    saved = open(CONF).read() if os.path.exists(CONF) else None
    results = []
    try:
        for fmt in a.formats or FORMATS:
            results.append(run_format(os.path.abspath(a.vmstate), work, assets, fmt))
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        print("SETUP FAILED: %s" % e, file=sys.stderr)
        return 2
    finally:
        stop_daemon()
        if saved is not None:
            with open(CONF, "w") as f:
                f.write(saved)
    if a.results:
        with open(a.results, "w") as f:
            json.dump({"results": results}, f, indent=1)
    for r in results:
        print("%-6s %s" % (r["format"], "ok" if r["ok"] else "FAILED"))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
