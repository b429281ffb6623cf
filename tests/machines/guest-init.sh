#!/bin/busybox sh
# /init of the machine corpus' guests (aarch64 and s390x Debian 12 kernels with a static
# busybox; packed into an initramfs by make-machine-corpus.sh).
#
# Loads the virtio modules listed in /etc/modules.list (dependency order) with insmod, then
# per corpus.mode= on the kernel command line:
#   idle      touch every device once (read vda/vdb/sda, write the serial port, read hwrng),
#             drop caches, say "CORPUS: READY" and sleep
#   blkwrite  say "CORPUS: READY", read one sector (fills the source's throttle bucket so that
#             the first write waits while the device takes the others off the ring), then one
#             4 MiB O_DIRECT write to /dev/vda, which with max_sectors_kb=256 reaches the ring
#             as 16 requests kicked together; the source fails every write (blkdebug,
#             werror=stop) and stops with them in flight.  Small writes start 2 s later.
#             Each finished write prints "CORPUS: Wn done" (seen on a destination after cont).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules.list); do
    insmod /lib/modules/$m.ko 2>/tmp/insmod.err || echo "CORPUS: insmod $m failed: $(cat /tmp/insmod.err)"
done
mode=idle
for a in $(cat /proc/cmdline); do
    case $a in corpus.mode=*) mode=${a#corpus.mode=} ;; esac
done
sleep 1
echo "CORPUS: modules loaded ($(wc -l < /etc/modules.list)), mode=$mode, $(uname -m) $(uname -r)"
echo "CORPUS: devices:" /dev/vd* /dev/sd* /dev/vport* /dev/hwrng
ip link set eth0 up 2>/dev/null && echo "CORPUS: eth0 up"
case $mode in
idle)
    for d in /dev/vda /dev/vdb /dev/sda; do
        [ -e $d ] && dd if=$d of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null && echo "CORPUS: read $d ok"
    done
    for p in /dev/vport*p1; do
        [ -e $p ] && timeout 5 sh -c "echo hello from guest > $p" && echo "CORPUS: wrote $p"
    done
    dd if=/dev/hwrng of=/dev/null bs=16 count=1 2>/dev/null && echo "CORPUS: read hwrng ok"
    sync; echo 3 > /proc/sys/vm/drop_caches
    echo "CORPUS: READY"
    while true; do sleep 1; done
    ;;
blkwrite)
    dev=/dev/vda
    echo 256 > /sys/block/vda/queue/max_sectors_kb
    echo none > /sys/block/vda/queue/scheduler 2>/dev/null
    echo "CORPUS: max_sectors_kb=$(cat /sys/block/vda/queue/max_sectors_kb)"
    sync; echo 3 > /proc/sys/vm/drop_caches
    echo "CORPUS: READY"
    write() {  # id bs seek(in bs units)
        if dd if=/dev/zero of=$dev bs=$2 count=1 seek=$3 oflag=direct conv=notrunc 2>/tmp/e$1; then
            echo "CORPUS: W$1 done"
        else
            echo "CORPUS: W$1 FAILED: $(cat /tmp/e$1)"
        fi
    }
    dd if=$dev of=/dev/null bs=512 count=1 iflag=direct 2>/dev/null
    write 0 4M 0 &
    sleep 2
    write 7 64k 128 &
    write 8 4k 2304 &
    write 9 512 20480 &
    wait
    echo "CORPUS: ALL WRITES DONE"
    while true; do sleep 1; done
    ;;
esac
