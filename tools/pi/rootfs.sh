#!/bin/sh
# Build (once) and enter an arm64 Debian root filesystem under qemu-user: a Raspberry Pi OS-like
# system on an x86 host (see the README's "On a Raspberry Pi"). Needs root.
#   rootfs.sh probe            can this host run arm64 binaries under qemu-user? (installs the tools)
#   rootfs.sh build            build or reuse $PI_ROOTFS
#   rootfs.sh mount | umount   mount proc/sys/dev (+ the Pi cpuinfo overlay) / unmount them
set -eu
ROOTFS=${PI_ROOTFS:-$HOME/.cache/verisparse/pi-rootfs}
SUITE=${PI_SUITE:-bookworm}
MIRROR=${PI_MIRROR:-http://deb.debian.org/debian}
HERE=$(cd "$(dirname "$0")" && pwd)

host_tools() {
    command -v debootstrap >/dev/null && [ -x /usr/bin/qemu-aarch64-static ] && command -v update-binfmts >/dev/null || {
        apt-get update -q && apt-get install -y -q qemu-user-static binfmt-support debootstrap; }
    # binfmt_misc is not mounted on every host; without it the kernel cannot run arm64 binaries
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
}

build() {
    host_tools
    [ -f "$ROOTFS/.verisparse-complete" ] && { echo "pi rootfs: reusing $ROOTFS"; return 0; }
    tmp="$ROOTFS.partial"
    rm -rf "$tmp"
    mkdir -p "$(dirname "$ROOTFS")"
    echo "pi rootfs: debootstrap $SUITE arm64 into $tmp (first stage)"
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates "$SUITE" "$tmp" "$MIRROR"
    echo "pi rootfs: second stage, emulated (about 8 minutes)"
    chroot "$tmp" /debootstrap/debootstrap --second-stage
    touch "$tmp/.verisparse-complete"
    rm -rf "$ROOTFS"
    mv "$tmp" "$ROOTFS"
}

mounted() { mountpoint -q "$1"; }

do_mount() {
    host_tools
    mounted "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
    mounted "$ROOTFS/sys" || mount -t sysfs sysfs "$ROOTFS/sys"
    mounted "$ROOTFS/dev" || mount --bind /dev "$ROOTFS/dev"
    mounted "$ROOTFS/dev/pts" || mount -t devpts devpts "$ROOTFS/dev/pts"
    # qemu-user shows the host's x86 cpuinfo; XNNPACK/ruy/onnxruntime CPU detection then crashes
    cp "$HERE/cpuinfo-pi4" "$ROOTFS/.pi-cpuinfo"
    mounted "$ROOTFS/proc/cpuinfo" || mount --bind "$ROOTFS/.pi-cpuinfo" "$ROOTFS/proc/cpuinfo"
}

do_umount() {
    # innermost first; dev is the host's /dev, so never delete the folder while it is mounted
    for m in proc/cpuinfo dev/pts dev sys proc; do
        while mounted "$ROOTFS/$m" 2>/dev/null; do umount "$ROOTFS/$m" || umount -l "$ROOTFS/$m"; done
    done
}

case "${1:-}" in
    probe) host_tools ;;
    build) build ;;
    mount) do_mount ;;
    umount) do_umount ;;
    *) echo "usage: $0 probe|build|mount|umount" >&2; exit 2 ;;
esac
