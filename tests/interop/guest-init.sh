#!/bin/busybox sh
# /init of the interop suite's guest (packed into an initramfs overlay by interop.py, on top
# of the corpus' busybox initramfs).
#
# Writes a known pattern to the disk (/dev/vda, or the disk `interop.disk=NAME` on the kernel
# command line names: sda for a virtio-scsi disk) with O_DIRECT, once per writer, and says so
# on the serial console. The source QEMU fails every write (blkdebug, werror=stop), so the VM stops
# with the first requests in flight and they travel in the migration stream; the destination
# has a plain disk, and after `cont` the guest prints one line per completed write, reads
# each one back, and ends with "INTEROP: ALL WRITES DONE".
#
# Writers: "id:size:offset" (bytes). One 4 MiB write per vCPU first: with max_sectors_kb=256
# it reaches the ring as 16 requests kicked together, so several fail and are held at once.
# The small writes start 2 s later and so usually run on the destination.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
disk=vda
for arg in $(cat /proc/cmdline); do
    case "$arg" in interop.disk=*) disk=${arg#interop.disk=} ;; esac
done
dev=/dev/$disk
# SCSI disks appear once the host adapter's scan is done.
for i in $(seq 100); do [ -b $dev ] && break; sleep 0.1; done
echo 256 > /sys/block/$disk/queue/max_sectors_kb
echo none > /sys/block/$disk/queue/scheduler 2>/dev/null
ncpu=$(nproc)
big="0:4194304:0"
[ "$ncpu" -ge 2 ] && big="$big 1:4194304:4194304"
small="7:65536:8388608 8:12288:9437184 9:512:10485760"
echo "INTEROP: guest up, $ncpu vCPU(s), writers: $big $small"

# Every 512-byte sector of a writer's pattern is unique: "interop W<id> sector <n>", padded.
for w in $big $small; do
    set -- $(echo "$w" | tr : ' ')
    awk -v id="$1" -v n=$(($2 / 512)) \
        'BEGIN { for (i = 0; i < n; i++) printf "%-511s\n", "interop W" id " sector " i }' > /tmp/p$1
done

# Zero the free memory so that QEMU sends it as zero pages: keeps the streams small.
n=$(awk '/MemFree/{print int($2/1024) - 10}' /proc/meminfo)
dd if=/dev/zero of=/tmp/zfill bs=1M count=$n 2>/dev/null; rm -f /tmp/zfill
echo 3 > /proc/sys/vm/drop_caches
echo "INTEROP: READY"

write() {  # id size offset
    if taskset -c $(($1 % ncpu)) dd if=/tmp/p$1 of=$dev bs=$2 count=1 seek=$(($3 / $2)) \
        oflag=direct conv=notrunc 2>/tmp/e$1; then
        echo "INTEROP: W$1 done"
        : > /tmp/done$1
    else
        echo "INTEROP: W$1 FAILED: $(cat /tmp/e$1)"
    fi
}
# One read right before the writes: on the source it fills the throttle group's bucket, so
# the first write waits there (about a second) while the device takes the others off the ring.
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
        echo "INTEROP: W$1 verified"
    else
        echo "INTEROP: W$1 MISMATCH"
        bad=$((bad + 1))
    fi
done
if [ $bad -eq 0 ]; then
    echo "INTEROP: ALL WRITES DONE ($count writes, all read back)"
else
    echo "INTEROP: WRITES FAILED ($bad of $count)"
fi
while true; do sleep 1; done
