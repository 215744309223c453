#!/bin/sh
# /init of the guest that scripts/test-kernels.sh boots (busybox-static).
# Loads the virtio/9p modules, mounts the host's root (read-only, tag
# "hostroot") and the results share (writable, tag "out"), brings up lo
# (without it every connect to 127.0.0.1 fails with ENETUNREACH), chroots
# into the host's root, runs /tmp/out/run.sh there and powers off.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko || echo "init: insmod $m failed"
done
r=/mnt
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot $r || echo "init: mounting / failed"
mount -t proc proc $r/proc
mount -t sysfs sys $r/sys
mount -t devtmpfs dev $r/dev
mkdir -p $r/dev/shm $r/dev/pts
mount -t tmpfs shm $r/dev/shm
mount -t tmpfs tmp $r/tmp
mkdir -p $r/tmp/out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out $r/tmp/out || echo "init: mounting out failed"
# The build directory comes as a share of its own, mounted at its host path:
# it may be under /tmp (a CI checkout), which the tmpfs above covers.
if [ -f $r/tmp/out/build_path ]; then
  b=$(cat $r/tmp/out/build_path)
  mkdir -p $r$b
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 build $r$b || echo "init: mounting $b failed"
fi
ip link set lo up
echo "init: running /tmp/out/run.sh"
chroot $r /bin/sh /tmp/out/run.sh
echo "init: run.sh exited $?"
sync
poweroff -f
