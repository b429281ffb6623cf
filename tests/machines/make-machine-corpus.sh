#!/bin/bash
# make-machine-corpus.sh - real QEMU 7.2 (or 10.0) migration streams of virtio devices on machines
# other than x86 pc/q35 (aarch64/arm/riscv64 virt over virtio-mmio and virtio-pci, s390x over
# virtio-ccw, ppc64 pseries and ppc mac99 over PCI, x86 microvm over virtio-mmio, plus one q35
# stream for virtio-mem/-pmem), with ground truth read over QMP before each save.
#
# usage: ./make-machine-corpus.sh            everything, then $OUT/MANIFEST.md
#        ./make-machine-corpus.sh NAME ...   only these scenarios (then MANIFEST.md again)
#        ./make-machine-corpus.sh --list     scenario names
#        QEMU_VERSION=10.0 ./make-machine-corpus.sh --fetch-qemu BIN...
#                    only unpack these emulators of that QEMU (as below) and print, one per
#                    line, shell words to run them: BIN=path, then ENV=VAR=value and
#                    DATA=dir (its -L folders); other suites run QEMU 10.0 through this
# env:   QEMU_VERSION=7.2|10.0   which QEMU (default 7.2: Debian 12's, installed with apt;
#                    10.0: bookworm-backports', unpacked into $WORK, see below)
#        OUT=dir     streams + metadata (default: <repo>/target/machine-corpus, and
#                    <repo>/target/machine-corpus-10.0 for QEMU_VERSION=10.0)
#        WORK=dir    scratch (default: ${TMPDIR:-/tmp}/machine-corpus-work): downloaded
#                    packages, unpacked kernels, initramfs, images, QMP sockets, logs
#        SKIP_INSTALL=1   install nothing (no apt-get at all)
#        JOBS=N      scenarios run in parallel (default 2)
#        FW_SECS=N   how long the firmware-only machines run before the save (default 15)
#        QEMU_TIMEOUT=seconds per QEMU process (default 300)
#        MIRROR=url  Debian mirror for bookworm-backports (default: the one apt already uses)
#
# Scenario NAME = <machine>-<transport>-<scenario>; the stream is $OUT/qemu7.2-NAME.mig
# ($OUT/qemu10.0-NAME.mig for QEMU_VERSION=10.0) with
# NAME.truth.json (x-query-virtio* just before the save), .cmdline, .load-status (a fresh
# QEMU with the same devices loading it with -incoming), .sections.json (section idstrs from
# the stream's own JSON description), .serial.log, .qemu.log, .notes (devices QEMU refused).
#
# Everything comes from Debian 12 packages: qemu-system-{arm,misc,ppc,x86}, qemu-efi-aarch64,
# qemu-efi-arm, busybox-static, cpio; the guests' kernels (linux-image-*-arm64,
# linux-image-*-s390x) and static busyboxes of those architectures are only downloaded
# (dpkg --add-architecture; apt-get download) and unpacked into $WORK, never installed.
# Every QEMU runs under `timeout`, talks QMP over a unix socket in $WORK only, has no network
# backend (-netdev hubport), and is killed, when it has to be, by its own pid.
#
# QEMU_VERSION=10.0: bookworm-backports' qemu-system-{arm,riscv,s390x,ppc,x86} (10.0 splits
# riscv64 and s390x out of qemu-system-misc), qemu-system-common, qemu-system-data and what
# they depend on that this system lacks or has too old (seabios, opensbi, libraries) are
# downloaded with a private apt state ($WORK/qemu-10.0/: own sources.list and lists, nothing of
# the system's apt configuration changes) and unpacked into $WORK/qemu-10.0/root, never
# installed. QEMU runs from there with -L for its own data (firmware), QEMU_MODULE_DIR for its
# own modules and LD_LIBRARY_PATH when libraries had to be unpacked; firmware it does not ship
# (edk2, ipxe) comes from bookworm as for 7.2. A scenario that QEMU 10.0 cannot run (QEMU's own
# error) is not fatal: it is reported, and $OUT/qemu10.0-NAME.skipped holds the message.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
QEMU_VERSION=${QEMU_VERSION:-7.2}
case $QEMU_VERSION in
7.2)  OUT=${OUT:-$ROOT/target/machine-corpus}; RUNS=run; LOGS=logs ;;
10.0) OUT=${OUT:-$ROOT/target/machine-corpus-$QEMU_VERSION}; RUNS=run-$QEMU_VERSION; LOGS=logs-$QEMU_VERSION ;;
*) echo "QEMU_VERSION=$QEMU_VERSION: 7.2 (Debian 12) or 10.0 (bookworm-backports)" >&2; exit 1 ;;
esac
QV=qemu$QEMU_VERSION
WORK=${WORK:-${TMPDIR:-/tmp}/machine-corpus-work}
JOBS=${JOBS:-2}
FW_SECS=${FW_SECS:-15}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-300}
QMP=(python3 "$HERE/qmp.py")
export OUT WORK JOBS FW_SECS QEMU_TIMEOUT QEMU_VERSION
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd); WORK=$(cd "$WORK" && pwd)
BPO=$WORK/qemu-$QEMU_VERSION

log() { echo "[machine-corpus $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

NOGUEST="aarch64virt-mmio-noguest aarch64virt-mmio-noguest-modern aarch64virt-mmio-noguest-extra
aarch64virt-pci-noguest aarch64virt-pci-noguest-extra
armvirt-mmio-noguest armvirt-mmio-noguest-extra
riscv64virt-mmio-noguest riscv64virt-mmio-noguest-extra
riscv64virt-pci-noguest riscv64virt-pci-noguest-extra
s390x-ccw-noguest s390x-ccw-noguest-extra
pseries-pci-noguest pseries-pci-noguest-extra mac99-pci-noguest
microvm-mmio-noguest microvm-mmio-noguest-extra q35-pci-noguest-mem"
FIRMWARE="aarch64virt-mmio-fw aarch64virt-mmio-fw-modern aarch64virt-pci-fw armvirt-mmio-fw riscv64virt-mmio-fw
riscv64virt-pci-fw s390x-ccw-fw pseries-pci-fw mac99-pci-fw microvm-mmio-fw"
BOOTED="aarch64virt-mmio-idle aarch64virt-mmio-idle-modern aarch64virt-mmio-inflight aarch64virt-pci-idle
aarch64virt-pci-inflight aarch64virt-pci-inflight-packed s390x-ccw-idle s390x-ccw-inflight"
ALL="$NOGUEST $FIRMWARE $BOOTED"

# ------------------------------------------------------------------ install
GUEST_ARCHES="arm64 s390x"
install_deps() {
    [ -n "${SKIP_INSTALL:-}" ] && return 0
    local need=() p
    if [ "$QEMU_VERSION" = 7.2 ]; then
        command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
        command -v qemu-system-s390x >/dev/null || need+=(qemu-system-misc)
        command -v qemu-system-ppc64 >/dev/null || need+=(qemu-system-ppc)
        command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
        [ -f /usr/share/seabios/bios-microvm.bin ] || need+=(seabios)
    fi
    [ -f /usr/share/qemu-efi-aarch64/QEMU_EFI.fd ] || need+=(qemu-efi-aarch64)
    [ -f /usr/share/AAVMF/AAVMF32_CODE.fd ] || need+=(qemu-efi-arm)
    command -v cpio >/dev/null || need+=(cpio)
    command -v busybox >/dev/null || need+=(busybox-static)
    local arches; arches=$(dpkg --print-foreign-architectures)
    local add=0
    for p in $GUEST_ARCHES; do
        echo "$arches" | grep -qx "$p" || { dpkg --add-architecture "$p"; add=1; }
    done
    if [ $add = 1 ] || [ ${#need[@]} -gt 0 ] || ! apt-cache show busybox-static:s390x >/dev/null 2>&1; then
        log "apt-get update"
        apt-get update -qq
    fi
    if [ ${#need[@]} -gt 0 ]; then
        log "installing ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}

# ------------------------------------------ QEMU 10.0 from bookworm-backports
# The Debian mirror this machine's apt already uses (deb822 or one-line sources)
system_mirror() {
    { sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null
      grep -hoE '^deb +[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'
    } | awk '{print $1}' | grep -m1 -i debian || true
}
HOSTARCH=$(dpkg --print-architecture)
TRIPLET=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo "$(uname -m)-linux-gnu")
# the package of each system emulator (in 10.0, riscv64 and s390x left qemu-system-misc)
bpo_pkg() {
    case $1 in
    qemu-system-aarch64|qemu-system-arm) echo qemu-system-arm ;;
    qemu-system-riscv64) echo qemu-system-riscv ;;
    qemu-system-s390x) echo qemu-system-s390x ;;
    qemu-system-ppc64|qemu-system-ppc) echo qemu-system-ppc ;;
    qemu-system-x86_64) echo qemu-system-x86 ;;
    *) die "no backports package for $1" ;;
    esac
}
# private apt state: backports only, host architecture only; the system's apt is only read
# (its dpkg status, and its lists for bookworm packages a backport needs)
bpo_apt() {
    local cmd=$1; shift
    "$cmd" -o Dir::Etc::sourcelist="$BPO/sources.list" -o Dir::Etc::sourceparts=/nonexistent \
        -o Dir::State::Lists="$BPO/lists" -o Dir::Cache::archives="$BPO/archives" \
        -o Dir::Etc::preferences=/nonexistent -o Dir::Etc::preferencesparts="$BPO/empty.d" \
        -o APT::Architectures::="$HOSTARCH" -o APT::Architecture="$HOSTARCH" "$@"
}
BPO_UPDATED=
bpo_update() {
    [ -n "$BPO_UPDATED" ] && return 0
    local m=${MIRROR:-$(system_mirror)}
    m=${m:-http://deb.debian.org/debian}
    mkdir -p "$BPO/lists/partial" "$BPO/archives/partial" "$BPO/debs" "$BPO/empty.d"
    echo "deb $m bookworm-backports main" > "$BPO/sources.list"
    log "bookworm-backports ($m): apt-get update (private state in $BPO)"
    bpo_apt apt-get update -qq || die "apt-get update of bookworm-backports failed"
    BPO_UPDATED=1
}
# unpacked packages: $BPO/root/.unpacked, "name version" per line
unpacked_version() {
    [ -f "$BPO/root/.unpacked" ] || return 0
    awk -v p="$1" '$1 == p {v = $2} END {print v}' "$BPO/root/.unpacked"
}
# bpo_get SOURCE NAME VERSION: download one package (SOURCE bpo: the private state; system:
# bookworm through the system's own lists) and unpack it into $BPO/root
bpo_get() {
    local src=$1 p=$2 v=$3 f
    rm -rf "$BPO/dl"; mkdir -p "$BPO/dl"
    if [ "$src" = bpo ]; then
        (cd "$BPO/dl" && bpo_apt apt-get download -q "$p=$v" 2>&1 | grep -v -e '^W: Download is performed unsandboxed' -e '^Get:' >&2 || true)
    else
        (cd "$BPO/dl" && apt-get download -q "$p=$v" 2>&1 | grep -v -e '^W: Download is performed unsandboxed' -e '^Get:' >&2 || true)
    fi
    f=$(ls "$BPO"/dl/*.deb 2>/dev/null | head -1)
    [ -n "$f" ] || die "apt-get download $p=$v ($src) failed"
    dpkg-deb -x "$f" "$BPO/root"
    mv "$f" "$BPO/debs/"
    echo "$p $v" >> "$BPO/root/.unpacked"
    log "unpacked $p $v ($src)"
}
# dep_ok NAME [OP VERSION]: the system (dpkg) or $BPO/root has it
dep_ok() {
    local p=${1%%:*} op=${2:-} v=${3:-} have
    have=$(unpacked_version "$p")
    if [ -z "$have" ]; then
        have=$(dpkg-query -W -f='${db:Status-Abbrev}|${Version}' "$p" 2>/dev/null | sed -n 's/^ii *|//p' | head -1)
    fi
    [ -n "$have" ] || return 1
    [ -z "$op" ] || dpkg --compare-versions "$have" "$op" "$v"
}
# dep_fetch NAME [OP VERSION]: the newest version that fits, from backports, else bookworm
dep_fetch() {
    local p=${1%%:*} op=${2:-} v=${3:-} src c
    for src in bpo system; do
        local lst
        if [ "$src" = bpo ]; then lst=$(bpo_apt apt-cache madison "$p" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}')
        else lst=$(apt-cache madison "$p" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}'); fi
        for c in $lst; do
            if [ -z "$op" ] || dpkg --compare-versions "$c" "$op" "$v"; then
                bpo_get "$src" "$p" "$c"; return 0
            fi
        done
    done
    return 1
}
# bpo_deps: every Depends/Pre-Depends of the unpacked packages that neither the system nor
# $BPO/root satisfies is fetched (newest fitting version; backports first), until none is left
bpo_deps() {
    local round f line alt ok p op v
    for round in 1 2 3 4 5 6 7 8; do
        local missing=()
        for f in "$BPO"/debs/*.deb; do
            while IFS= read -r line; do
                [ -n "$line" ] || continue
                ok=0
                IFS='|' read -ra alts <<< "$line"
                for alt in "${alts[@]}"; do
                    read -r p op v <<< "$(echo "$alt" | sed -E 's/^ *([^ (]+) *(\(([<>=]+) *([^)]+)\))?.*/\1 \3 \4/')"
                    if dep_ok "$p" "$op" "$v"; then ok=1; break; fi
                done
                [ $ok = 1 ] || missing+=("${alts[0]}")
            done < <(dpkg-deb -f "$f" Depends Pre-Depends | sed 's/^[A-Za-z-]*: //' | tr ',' '\n' | sed 's/^ *//')
        done
        [ ${#missing[@]} -gt 0 ] || return 0
        local seen=" " m
        for m in "${missing[@]}"; do
            read -r p op v <<< "$(echo "$m" | sed -E 's/^ *([^ (]+) *(\(([<>=]+) *([^)]+)\))?.*/\1 \3 \4/')"
            case $seen in *" $p "*) continue ;; esac
            seen="$seen$p "
            dep_ok "$p" "$op" "$v" && continue
            log "this system lacks $m"
            bpo_update
            dep_fetch "$p" "$op" "$v" || die "cannot satisfy $m from bookworm-backports or bookworm (apt-get update?)"
        done
    done
    die "dependencies of the backports QEMU do not settle"
}
# fetch_bpo_qemu BIN...: the emulators these scenarios run, unpacked into $BPO/root
fetch_bpo_qemu() {
    local want=(qemu-system-common qemu-system-data) b p v need=()
    for b in "$@"; do want+=("$(bpo_pkg "$b")"); done
    mkdir -p "$BPO/root" "$BPO/debs"
    for p in $(printf '%s\n' "${want[@]}" | sort -u); do
        [ -n "$(unpacked_version "$p")" ] || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        bpo_update
        v=$(bpo_apt apt-cache madison qemu-system-common | awk -F'|' '/backports/{gsub(/ /,"",$2); print $2; exit}')
        case $v in
        1:"$QEMU_VERSION".*) ;;
        "") die "bookworm-backports has no qemu-system-common" ;;
        *) die "bookworm-backports has QEMU $v, not $QEMU_VERSION" ;;
        esac
        local have; have=$(unpacked_version qemu-system-common)
        if [ -n "$have" ] && [ "$have" != "$v" ]; then
            log "backports moved from QEMU $have to $v: unpacking afresh"
            rm -rf "$BPO/root" "$BPO/debs"; mkdir -p "$BPO/root" "$BPO/debs"
            need=($(printf '%s\n' "${want[@]}" | sort -u))
        fi
        for p in "${need[@]}"; do bpo_get bpo "$p" "$v"; done
    fi
    bpo_deps
}
# bpo_setup: QDATA (-L data dirs) and QENV (env of every QEMU) for the unpacked QEMU
QDATA=(); QENV=()
bpo_setup() {
    [ "$QEMU_VERSION" = 7.2 ] && return 0
    local R=$BPO/root d libs=
    # its own data first; QEMU then still looks in its built-in /usr/share/qemu etc.
    # (bookworm's files) for what these lack (ipxe ROMs)
    for d in "$R/usr/share/qemu" "$R/usr/share/seabios" "$R/usr/lib/ipxe/qemu"; do
        [ -d "$d" ] && QDATA+=(-L "$d")
    done
    for d in "$R/lib/$TRIPLET" "$R/usr/lib/$TRIPLET"; do
        ls "$d"/lib*.so* >/dev/null 2>&1 && libs=${libs:+$libs:}$d
    done
    QENV=(env QEMU_MODULE_DIR="$R/usr/lib/$TRIPLET/qemu")
    [ -n "$libs" ] && QENV+=(LD_LIBRARY_PATH="$libs")
    return 0
}
# check_bpo_qemu BIN...: every library resolves (ldd) and each says it is QEMU_VERSION
check_bpo_qemu() {
    local b f bad= ver
    for b in "$@"; do
        f=$BPO/root/usr/bin/$b
        [ -x "$f" ] || die "$f missing (SKIP_INSTALL=1 with nothing unpacked?)"
        bad=$(for x in "$f" "$BPO/root/usr/lib/$TRIPLET"/qemu/*.so; do
                  [ -f "$x" ] && "${QENV[@]}" ldd "$x" | sed -n "s|^\s*\(\S*\) => not found|$(basename "$x"): \1|p"
              done | sort -u | tr '\n' ' ')
        [ -z "$bad" ] || die "$b: libraries not found: $bad"
        ver=$("${QENV[@]}" LD_BIND_NOW=1 "$f" --version | head -1)
        case $ver in "QEMU emulator version $QEMU_VERSION".*) ;; *) die "$f: '$ver' is not QEMU $QEMU_VERSION" ;; esac
    done
    log "$("${QENV[@]}" "$BPO/root/usr/bin/$1" --version | head -1) from $BPO/root (${QENV[*]:1})"
}

# ------------------------------------------- guest kernels, busybox, initramfs
# guest_prepare ARCH: $WORK/guest-ARCH/{vmlinuz,initrd.gz}
kernel_meta() { case $1 in arm64) echo linux-image-arm64 ;; s390x) echo linux-image-s390x ;; esac; }
guest_prepare() {
    local arch=$1 G=$WORK/guest-$1
    if [ -f "$G/initrd.gz" ] && [ "$G/initrd.gz" -nt "$HERE/guest-init.sh" ] &&
        [ "$G/initrd.gz" -nt "$0" ]; then
        return 0
    fi
    mkdir -p "$G/debs"
    local meta pkg
    meta=$(kernel_meta "$arch")
    pkg=$(apt-cache depends "$meta:$arch" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    pkg=${pkg%:"$arch"}
    [ -n "$pkg" ] || die "cannot resolve $meta:$arch (dpkg --add-architecture $arch; apt-get update?)"
    log "guest $arch: $meta -> $pkg, busybox-static:$arch"
    if ! ls "$G"/debs/"${pkg}"_*.deb >/dev/null 2>&1; then
        rm -f "$G"/debs/*.deb
        (cd "$G/debs" && apt-get download -q "$pkg:$arch" "busybox-static:$arch" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
    fi
    ls "$G"/debs/"${pkg}"_*.deb >/dev/null 2>&1 || die "apt-get download $pkg:$arch failed"
    rm -rf "$G/root" "$G/bb"
    dpkg-deb -x "$G"/debs/"${pkg}"_*.deb "$G/root"
    dpkg-deb -x "$G"/debs/busybox-static_*.deb "$G/bb"
    local kver
    kver=$(ls "$G/root/lib/modules")
    cp "$G/root/boot/vmlinuz-$kver" "$G/vmlinuz"
    echo "$pkg $kver" > "$G/kernel-version"
    local R=$G/initramfs
    rm -rf "$R"; mkdir -p "$R"/{bin,proc,sys,dev,etc,lib/modules,tmp}
    cp "$G/bb/bin/busybox" "$R/bin/busybox"
    local mods="virtio_blk virtio_net virtio_scsi sd_mod virtio_console virtio_rng virtio_balloon"
    [ "$arch" = arm64 ] && mods="virtio_mmio virtio_pci $mods"
    # s390x: virtio_ccw is built in (CONFIG_S390_GUEST=y, see modules.builtin.modinfo)
    python3 - "$G/root/lib/modules/$kver" "$R/lib/modules" $mods > "$R/etc/modules.list" <<'EOF'
import os, re, shutil, sys
top, dst, want = sys.argv[1], sys.argv[2], sys.argv[3:]
idx = {}
for r, _, fs in os.walk(os.path.join(top, "kernel")):
    for f in fs:
        if f.endswith(".ko"):
            idx[f[:-3].replace("-", "_")] = os.path.join(r, f)
builtin = set()
for l in open(os.path.join(top, "modules.builtin")):
    builtin.add(os.path.basename(l.strip())[:-3].replace("-", "_"))
def deps(m):
    b = open(idx[m], "rb").read()
    x = re.search(rb"\x00depends=([^\x00]*)\x00", b)
    return [d.replace("-", "_") for d in x.group(1).decode().split(",")] if x and x.group(1) else []
order = []
def visit(m):
    if m in order or m in builtin:
        return
    if m not in idx:
        sys.exit("module %s: neither a module nor built in" % m)
    for d in deps(m):
        visit(d)
    order.append(m)
for m in want:
    visit(m)
for m in order:
    shutil.copy(idx[m], os.path.join(dst, m + ".ko"))
    print(m)
EOF
    cp "$HERE/guest-init.sh" "$R/init"; chmod +x "$R/init"
    (cd "$R" && find . | cpio -o -H newc --quiet | gzip -6) > "$G/initrd.gz.tmp"
    mv "$G/initrd.gz.tmp" "$G/initrd.gz"
    log "guest $arch: kernel $kver, initramfs $(stat -c %s "$G/initrd.gz") bytes, modules: $(tr '\n' ' ' < "$R/etc/modules.list")"
}

# ----------------------------------------------------------------- QEMU helpers
# qemu_bin NAME: the binary run as NAME (7.2: the system's; 10.0: the unpacked one)
qemu_bin() { if [ "$QEMU_VERSION" = 7.2 ]; then echo "$1"; else echo "$BPO/root/usr/bin/$1"; fi; }
# start_qemu DIR BIN ARGS... : QEMU in the background under timeout, QMP on DIR/qmp.sock
start_qemu() {
    local d=$1 bin; bin=$(qemu_bin "$2"); shift 2
    set -- "${QDATA[@]}" "$@"
    mkdir -p "$d"; rm -f "$d/qmp.sock"
    python3 -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' "${QENV[@]}" "$bin" "$@" > "$d/cmdline"
    (cd "$d" && exec "${QENV[@]}" timeout "$QEMU_TIMEOUT" "$bin" "$@" \
        -qmp "unix:$d/qmp.sock,server=on,wait=off" > "$d/qemu.log" 2>&1) &
    QPID=$!
    echo "$QPID" > "$d/pid"
    local i
    for i in $(seq 100); do
        [ -S "$d/qmp.sock" ] && return 0
        kill -0 "$QPID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
# stop_qemu: wait for our QEMU (the timeout process, pid $QPID) to exit; after 10 s kill it
# (timeout passes SIGTERM on to its QEMU)
stop_qemu() {
    [ -n "${QPID:-}" ] || return 0
    local i
    for i in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$QPID" 2>/dev/null; then
        log "killing QEMU (timeout pid $QPID)"
        kill "$QPID" 2>/dev/null || true
    fi
    QRC=0
    wait "$QPID" 2>/dev/null || QRC=$?
    QPID=
}
QPID=
cleanup() { if [ -n "${QPID:-}" ] && kill -0 "$QPID" 2>/dev/null; then kill "$QPID"; fi; true; }
trap cleanup EXIT
qmp() { local d=$1; shift; "${QMP[@]}" "$d/qmp.sock" "$@"; }
# QEMU's own messages, less the harmless warnings of every run (hubport without host
# network; pseries' spectre caps that TCG cannot provide)
qemu_errors() {
    grep -v -e 'hub 0 is not connected' -e "TCG doesn't support requested feature" "$1/qemu.log" |
        grep -v '^$' | head -5 | tr '\n' ' ' || true
}

# probe BIN PIECE...: does QEMU start with MACH (global array) plus this device and can it
# migrate? Prints nothing and returns 0 when it can, else prints QEMU's own message.
probe() {
    local bin=$1; shift
    local d=$RUN/probe
    rm -rf "$d"; mkdir -p "$d"
    if ! start_qemu "$d" "$bin" "${MACH[@]}" -S "$@"; then
        stop_qemu; qemu_errors "$d"; return 1
    fi
    local msg=
    if ! qmp "$d" "migrate:exec:cat > /dev/null,60" > "$d/qmp.log" 2>&1; then
        msg="migrate refused: $(tail -1 "$d/qmp.log" | sed 's/^QMPError: //')"
    fi
    qmp "$d" quit >/dev/null 2>&1 || true
    stop_qemu
    if [ -n "$msg" ] && [ "$QRC" != 0 ] && [ -n "$(qemu_errors "$d")" ]; then
        msg="QEMU exited (code $QRC): $(qemu_errors "$d")"
    fi
    [ -z "$msg" ] || { echo "$msg"; return 1; }
}

# ----------------------------------------------------------------- device sets
# Each appends to the global array DEV. $IMG = folder for the disk images.
img() { [ -f "$IMG/$1" ] || truncate -s "${2:-1M}" "$IMG/$1"; }
blk() {  # SUFFIX ID NODE IMAGE [PROPS]
    img "$4"
    DEV+=(-blockdev "driver=file,filename=$IMG/$4,node-name=f$3" -blockdev "driver=raw,file=f$3,node-name=$3"
          -device "virtio-blk-$1,drive=$3,id=$2${5:+,$5}")
}
core_devices() {  # SUFFIX [nopacked]
    local s=$1
    blk "$s" vblk0 d0 blk0.img
    [ "${2:-}" = nopacked ] || blk "$s" vblk1 d1 blk1.img packed=on
    img scsi0.img
    DEV+=(-netdev hubport,id=n0,hubid=0 -device "virtio-net-$s,netdev=n0,id=vnet0,mac=52:54:00:12:34:56"
          -device "virtio-scsi-$s,id=vscsi0"
          -blockdev "driver=file,filename=$IMG/scsi0.img,node-name=fs0" -blockdev "driver=raw,file=fs0,node-name=s0"
          -device scsi-hd,drive=s0,bus=vscsi0.0,id=sd0
          -device "virtio-serial-$s,id=vser0" -chardev "file,id=c0,path=$IMG/vport0.out"
          -device virtserialport,chardev=c0,bus=vser0.0,name=org.corpus.0,id=port0
          -device "virtio-balloon-$s,id=balloon0"
          -object rng-builtin,id=rng0 -device "virtio-rng-$s,rng=rng0,id=vrng0")
}
# more device kinds, each only when QEMU takes it (start + migrate); refusals -> $NOTES
extra_devices() {  # BIN SUFFIX
    local bin=$1 s=$2 p msg
    mkdir -p "$IMG/9p"
    local pieces=(
        "-device virtio-gpu-$s,id=vgpu0"
        "-device virtio-keyboard-$s,id=vkbd0"
        "-device virtio-mouse-$s,id=vmouse0"
        "-device virtio-tablet-$s,id=vtablet0"
        "-fsdev local,id=fsd0,path=$IMG/9p,security_model=none -device virtio-9p-$s,fsdev=fsd0,mount_tag=corpus,id=v9p0"
        "-object cryptodev-backend-builtin,id=cryp0 -device virtio-crypto-$s,cryptodev=cryp0,id=vcrypto0"
        "-device vhost-vsock-$s,guest-cid=3,id=vsock0")
    [ "$s" = pci ] && [ "$bin" = qemu-system-aarch64 ] && pieces+=("-device virtio-iommu-pci,id=viommu0")
    [ "$s" = device ] && [ "$bin" = qemu-system-aarch64 ] && pieces+=("-device virtio-iommu-device,id=viommu0")
    for p in "${pieces[@]}"; do
        # shellcheck disable=SC2086
        if msg=$(probe "$bin" $p); then
            # shellcheck disable=SC2206
            DEV+=($p)
            echo "ok: $p" >> "$NOTES"
        else
            echo "REFUSED: $p: $msg" >> "$NOTES"
            log "$NAME: QEMU refused '$p': $msg"
        fi
    done
}

# ------------------------------------------------------------------ scenarios
# bin_of NAME: the system emulator of a scenario
bin_of() {
    case ${1%%-*} in
    aarch64virt) echo qemu-system-aarch64 ;;
    armvirt)     echo qemu-system-arm ;;
    riscv64virt) echo qemu-system-riscv64 ;;
    s390x)       echo qemu-system-s390x ;;
    pseries)     echo qemu-system-ppc64 ;;
    mac99)       echo qemu-system-ppc ;;
    microvm|q35) echo qemu-system-x86_64 ;;
    *) die "unknown machine in $1" ;;
    esac
}
# SeaBIOS of the QEMU in use (10.0 wants bookworm-backports' 1.16.3)
SEABIOS=/usr/share/seabios
[ "$QEMU_VERSION" = 7.2 ] || [ ! -d "$BPO/root/usr/share/seabios" ] || SEABIOS=$BPO/root/usr/share/seabios
# define NAME: sets BIN, MACH (machine args), DEV (source devices), DST (destination devices,
# empty = same), KIND (noguest|fw|idle|inflight), GUEST (arm64|s390x), APPEND
define() {
    local n=$1 m t s
    m=${n%%-*}; t=${n#*-}; t=${t%%-*}; s=${n#*-*-}
    MACHINE=$m TRANSPORT=$t SCEN=$s
    DEV=(); DST=(); GUEST=; APPEND=; FWS=$FW_SECS
    local sfx=$t; [ "$t" = mmio ] && sfx=device
    BIN=$(bin_of "$n")
    case $m in
    aarch64virt) MACH=(-M virt -cpu cortex-a57 -m 64) ;;
    armvirt)     MACH=(-M virt -cpu cortex-a15 -m 64) ;;
    riscv64virt) MACH=(-M virt -m 64) ;;
    s390x)       MACH=(-M s390-ccw-virtio -m 64) ;;
    pseries)     MACH=(-M pseries -m 256) ;;
    mac99)       MACH=(-M mac99 -m 64) ;;
    microvm)     MACH=(-M microvm -m 64) ;;
    q35)         MACH=(-M q35 -m 64) ;;
    esac
    MACH+=(-accel tcg -smp 1 -nodefaults -display none)
    # *-modern: virtio-mmio transports in virtio 1.0 mode (QEMU 7.2's default is legacy,
    # force-legacy=true)
    case $s in *-modern) MODERN=(-global virtio-mmio.force-legacy=false); s=${s%-modern} ;; *) MODERN=() ;; esac
    # *-packed: the in-flight disk with packed=on (packed virtqueue)
    local packed=
    case $s in *-packed) packed=,packed=on; s=${s%-packed} ;; esac
    case $s in
    noguest)
        KIND=noguest
        if [ "$m" = mac99 ]; then
            blk pci vblk0 d0 blk0.img
            DEV+=(-netdev hubport,id=n0,hubid=0 -device virtio-net-pci,netdev=n0,id=vnet0,mac=52:54:00:12:34:56
                  -object rng-builtin,id=rng0 -device virtio-rng-pci,rng=rng0,id=vrng0)
        else
            core_devices "$sfx"
        fi ;;
    noguest-extra) KIND=noguest; extra_devices "$BIN" "$sfx" ;;
    noguest-mem)
        KIND=noguest
        [ "$m" = q35 ] || die "$n: noguest-mem is for q35"
        MACH=(-M q35 -m 64,slots=2,maxmem=1G -accel tcg -smp 1 -nodefaults -display none)
        img pmem0.img 16M
        DEV+=(-object memory-backend-ram,id=vmem-mem0,size=128M
              -device virtio-mem-pci,memdev=vmem-mem0,id=vmem0,requested-size=0
              -object "memory-backend-file,id=vpmem-mem0,mem-path=$IMG/pmem0.img,size=16M,share=on"
              -device virtio-pmem-pci,memdev=vpmem-mem0,id=vpmem0
              -device virtio-balloon-pci,id=balloon0) ;;
    fw)
        KIND=fw
        case $m in
        aarch64virt) MACH=(-M virt -cpu cortex-a57 -m 128 -accel tcg -smp 1 -nodefaults -display none
                           -bios /usr/share/qemu-efi-aarch64/QEMU_EFI.fd) ;;
        armvirt) MACH=(-M virt -cpu cortex-a15 -m 128 -accel tcg -smp 1 -nodefaults -display none
                       -bios /usr/share/AAVMF/AAVMF32_CODE.fd) ;;
        # Debian's default microvm firmware is qboot (bios-microvm.bin -> qboot.rom), which
        # never touches virtio; SeaBIOS' microvm build drives virtio-mmio block devices
        microvm) MACH+=(-bios "$SEABIOS/bios-microvm.bin") ;;
        # SLOF takes ~20 s under TCG to probe every virtio device
        pseries) FWS=30 ;;
        esac
        # s390x: a disabled wait (no bootable disk) is a guest panic; keep the VM
        MACH+=(-action panic=pause -no-reboot)
        if [ "$m" = mac99 ]; then
            blk pci vblk0 d0 blk0.img
            DEV+=(-netdev hubport,id=n0,hubid=0 -device virtio-net-pci,netdev=n0,id=vnet0,mac=52:54:00:12:34:56)
        else
            core_devices "$sfx"
        fi ;;
    idle|inflight)
        KIND=$s
        case $m in
        aarch64virt) GUEST=arm64; APPEND="console=ttyAMA0"
                     MACH=(-M virt -cpu cortex-a57 -m 256 -accel tcg -smp 1 -nodefaults -display none) ;;
        s390x)       GUEST=s390x; APPEND="console=ttysclp0"
                     MACH=(-M s390-ccw-virtio -m 256 -accel tcg -smp 1 -nodefaults -display none) ;;
        *) die "$n: no booted guest for $m" ;;
        esac
        local G=$WORK/guest-$GUEST
        APPEND="$APPEND panic=-1 loglevel=4 init_on_free=1 corpus.mode=$([ "$s" = idle ] && echo idle || echo blkwrite)"
        MACH+=(-no-reboot -kernel "$G/vmlinuz" -initrd "$G/initrd.gz" -append "$APPEND")
        if [ "$s" = idle ]; then
            core_devices "$sfx"
        else
            img disk.img 16M
            local bdev="virtio-blk-$sfx,drive=bd0,id=vblk0,werror=stop,rerror=stop$packed"
            DEV=(-blockdev "driver=file,filename=$IMG/disk.img,node-name=bf0"
                 -blockdev "driver=blkdebug,image=bf0,node-name=bdbg,inject-error.0.event=write_aio,inject-error.0.iotype=write,inject-error.0.errno=5"
                 -blockdev driver=raw,file=bdbg,node-name=raw0
                 -object throttle-group,id=tg0,x-iops-total=1
                 -blockdev driver=throttle,throttle-group=tg0,file=raw0,node-name=bd0
                 -device "$bdev")
            DST=(-blockdev "driver=file,filename=$IMG/disk.img,node-name=bf0"
                 -blockdev driver=raw,file=bf0,node-name=bd0 -device "$bdev")
        fi ;;
    *) die "unknown scenario in $n" ;;
    esac
    MACH+=("${MODERN[@]}")
}

# load_check DIR STREAM ARGS...: a fresh QEMU loads the stream; prints the result line
load_check() {
    local d=$1 f=$2; shift 2
    rm -rf "$d"; mkdir -p "$d"
    local st
    if ! start_qemu "$d" "$BIN" "$@" -incoming "exec:cat $f"; then
        stop_qemu
        echo "FAILED to start: $(qemu_errors "$d")"; return 0
    fi
    if qmp "$d" wait-load,120 "truth:$d/dst-truth.json" > "$d/qmp-load.log" 2>&1; then
        st=$(sed -n 's/^loaded: //p' "$d/qmp-load.log")
        st="loaded, status $st"
        local broken
        broken=$(python3 -c 'import json, sys
t = json.load(open(sys.argv[1]))
print(" ".join(d["path"] for d in t.get("devices", []) if d.get("status", {}).get("broken")))' "$d/dst-truth.json")
        [ -z "$broken" ] || st="$st; marked broken by the load: $broken"
    else
        qmp "$d" quit >/dev/null 2>&1 || true
        stop_qemu
        echo "FAILED: QEMU exited during the load (exit code $QRC): $(qemu_errors "$d")"
        return 0
    fi
    if [ "$KIND" = inflight ] && [[ $st == loaded* ]]; then
        # resume: the requests held in the stream must complete on the destination
        if qmp "$d" '{"execute":"cont"}' "wait-serial:$d/serial.log:CORPUS: W0 done,90" \
            > "$d/qmp-cont.log" 2>&1; then
            st="$st; after cont: the held 4 MiB write completed (CORPUS: W0 done)"
        else
            st="$st; after cont: W0 did NOT complete in 90 s ($(tail -1 "$d/qmp-cont.log"))"
        fi
    fi
    qmp "$d" quit >/dev/null 2>&1 || true
    stop_qemu
    local e; e=$(qemu_errors "$d")
    [ -n "$e" ] && st="$st [qemu: $e]"
    echo "$st"
}

# scenario_fail MSG: 7.2, fatal; other versions: the scenario is skipped, MSG (QEMU's own
# words) in $OUT/$STREAM.skipped instead of the stream, and the run goes on
scenario_fail() {
    [ "$QEMU_VERSION" = 7.2 ] && die "$*"
    local f
    for f in "$OUT/$STREAM".*; do [ -e "$f" ] && rm -f "$f"; done
    echo "$*" > "$OUT/$STREAM.skipped"
    log "SKIPPED $NAME: QEMU $QEMU_VERSION cannot run it: $*"
    exit 0
}

# run_one NAME: record one stream
run_one() {
    local NAME=$1
    STREAM=$QV-$NAME
    RUN=$WORK/$RUNS/$NAME
    rm -rf "$RUN"; mkdir -p "$RUN/img"
    rm -f "$OUT/$STREAM.skipped"
    IMG=$RUN/img NOTES=$RUN/notes
    : > "$NOTES"
    local t0=$SECONDS
    define "$NAME"
    [ -n "$GUEST" ] && { [ -f "$WORK/guest-$GUEST/initrd.gz" ] || die "guest $GUEST not prepared"; }
    local f=$RUN/$STREAM.mig src=$RUN/src
    local serial=(-serial "file:$src/serial.log")
    local dserial=(-serial "file:$RUN/dst/serial.log")
    [ "$KIND" = noguest ] && { serial=(); dserial=(); }
    local attempt max=1
    [ "$KIND" = inflight ] && max=4
    for attempt in $(seq $max); do
        rm -rf "$src"; rm -f "$f"
        local extra=(); [ "$KIND" = noguest ] && extra=(-S)
        start_qemu "$src" "$BIN" "${MACH[@]}" "${extra[@]}" "${serial[@]}" "${DEV[@]}" ||
            { stop_qemu; scenario_fail "$NAME: QEMU did not start: $(qemu_errors "$src")"; }
        case $KIND in
        noguest) ;;
        fw) qmp "$src" "sleep:$FWS" '{"execute":"stop"}' status > "$src/qmp-run.log" ;;
        idle) qmp "$src" "wait-serial:$src/serial.log:CORPUS: READY,${BOOT_WAIT:-300}" sleep:3 \
                  '{"execute":"stop"}' status > "$src/qmp-run.log" ||
                  { qmp "$src" quit >/dev/null 2>&1 || true; stop_qemu; scenario_fail "$NAME: guest did not get READY: $(tail -3 "$src/serial.log" | tr '\n' ' ') $(qemu_errors "$src")"; } ;;
        inflight) qmp "$src" "wait-serial:$src/serial.log:CORPUS: READY,${BOOT_WAIT:-300}" \
                  "wait-status:io-error,120" '{"execute":"stop"}' status > "$src/qmp-run.log" ||
                  { qmp "$src" quit >/dev/null 2>&1 || true; stop_qemu; scenario_fail "$NAME: no io-error stop: $(tail -3 "$src/serial.log" | tr '\n' ' ') $(qemu_errors "$src")"; } ;;
        esac
        qmp "$src" "truth:$RUN/$STREAM.truth.json" "migrate:exec:cat > $f,180" quit > "$src/qmp-save.log" 2>&1 ||
            { stop_qemu; scenario_fail "$NAME: save failed: $(tail -2 "$src/qmp-save.log" | tr '\n' ' ') $(qemu_errors "$src")"; }
        stop_qemu
        [ "$KIND" = inflight ] || break
        local n
        n=$("${QMP[@]}" inflight "$RUN/$STREAM.truth.json" | python3 -c 'import json,sys; print(sum(d["total"] for d in json.load(sys.stdin) if d["name"]=="virtio-blk"))')
        log "$NAME: attempt $attempt: $n request(s) in flight"
        [ "$n" -ge 4 ] && break
    done
    local dev=("${DEV[@]}"); [ ${#DST[@]} -gt 0 ] && dev=("${DST[@]}")
    local extra=(); [ "$KIND" = noguest ] && extra=(-S)
    local ls; ls=$(load_check "$RUN/dst" "$f" "${MACH[@]}" "${extra[@]}" "${dserial[@]}" "${dev[@]}")
    # publish
    cp "$f" "$OUT/$STREAM.mig"
    cp "$RUN/$STREAM.truth.json" "$OUT/"
    cp "$src/cmdline" "$OUT/$STREAM.cmdline"
    echo "$ls" > "$OUT/$STREAM.load-status"
    cp "$RUN/dst/cmdline" "$OUT/$STREAM.dst-cmdline"
    if [ -f "$RUN/dst/dst-truth.json" ]; then cp "$RUN/dst/dst-truth.json" "$OUT/$STREAM.dst-truth.json"; else rm -f "$OUT/$STREAM.dst-truth.json"; fi
    grep -v 'hub 0 is not connected' "$src/qemu.log" > "$OUT/$STREAM.qemu.log" || true
    [ -f "$src/serial.log" ] && cp "$src/serial.log" "$OUT/$STREAM.serial.log"
    [ -f "$RUN/dst/serial.log" ] && cp "$RUN/dst/serial.log" "$OUT/$STREAM.dst-serial.log"
    if [ -s "$NOTES" ]; then cp "$NOTES" "$OUT/$STREAM.notes"; else rm -f "$OUT/$STREAM.notes"; fi
    "${QMP[@]}" sections "$f" > "$OUT/$STREAM.sections.json"
    echo "$MACHINE $TRANSPORT $SCEN $KIND $BIN" > "$OUT/$STREAM.info"
    log "$NAME: $(stat -c %s "$f") bytes, load: $ls ($((SECONDS - t0)) s)"
}

# run a group of scenarios, JOBS at a time (each in its own process: ./script --one NAME)
run_group() {  # LABEL NAME...
    local label=$1; shift
    [ $# -gt 0 ] || return 0
    local t0=$SECONDS
    mkdir -p "$WORK/$LOGS"
    log "== $label: $*"
    local rc=0
    printf '%s\n' "$@" | xargs -P "$JOBS" -I{} sh -c \
        'SKIP_INSTALL=1 "$0" --one "$1" > "$2/$1.log" 2>&1; r=$?; tail -1 "$2/$1.log" >&2; exit $r' \
        "$0" {} "$WORK/$LOGS" || rc=1
    log "== $label: $(( SECONDS - t0 )) s"
    return $rc
}

# ------------------------------------------------------------------ main
if [ "${1:-}" = --list ]; then printf '%s\n' $ALL; exit 0; fi
if [ "${1:-}" = --one ]; then bpo_setup; run_one "$2"; exit 0; fi
if [ "${1:-}" = --fetch-qemu ]; then
    shift
    [ "$QEMU_VERSION" != 7.2 ] || die "--fetch-qemu is for QEMU_VERSION=10.0 (7.2 is Debian's own)"
    [ -n "${SKIP_INSTALL:-}" ] || fetch_bpo_qemu "$@"
    bpo_setup
    check_bpo_qemu "$@"
    for b in "$@"; do echo "BIN=$BPO/root/usr/bin/$b"; done
    for e in "${QENV[@]:1}"; do echo "ENV=$e"; done
    for d in "${QDATA[@]}"; do [ "$d" = -L ] || echo "DATA=$d"; done
    exit 0
fi
T0=$SECONDS
[ $# -gt 0 ] || set -- $ALL
for n in "$@"; do
    printf '%s\n' $ALL | grep -qx "$n" || die "unknown scenario $n (see --list)"
done
install_deps
if [ "$QEMU_VERSION" != 7.2 ]; then
    bins=$(for n in "$@"; do bin_of "$n"; done | sort -u)
    # shellcheck disable=SC2086
    [ -n "${SKIP_INSTALL:-}" ] || fetch_bpo_qemu $bins
    bpo_setup
    # shellcheck disable=SC2086
    check_bpo_qemu $bins
fi
log "install: $((SECONDS - T0)) s"
ng=(); fw=(); bt=(); arches=
for n in "$@"; do
    case $n in
    *-noguest*) ng+=("$n") ;;
    *-fw|*-fw-*) fw+=("$n") ;;
    aarch64virt-*) bt+=("$n"); arches="$arches arm64" ;;
    s390x-*) bt+=("$n"); arches="$arches s390x" ;;
    esac
done
FAILED=0
run_group "no guest" "${ng[@]}" || FAILED=1
run_group "firmware only" "${fw[@]}" || FAILED=1
if [ ${#bt[@]} -gt 0 ]; then
    t=$SECONDS
    for a in $(printf '%s\n' $arches | sort -u); do guest_prepare "$a"; done
    log "guest kernels + initramfs: $((SECONDS - t)) s"
    run_group "booted guests" "${bt[@]}" || FAILED=1
fi
python3 "$HERE/manifest.py" "$OUT" > "$OUT/MANIFEST.md"
log "MANIFEST: $OUT/MANIFEST.md ($(ls "$OUT"/*.mig | wc -l) streams)"
if [ "$QEMU_VERSION" != 7.2 ]; then
    for n in "$@"; do
        [ -f "$OUT/$QV-$n.skipped" ] && log "skipped (QEMU $QEMU_VERSION could not run it): $(cat "$OUT/$QV-$n.skipped")"
    done
fi
log "total: $((SECONDS - T0)) s"
[ $FAILED = 0 ] || { log "some scenarios failed: see $WORK/logs/"; exit 1; }
