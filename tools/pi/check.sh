#!/bin/sh
# make pi-check: install the light package from this checkout into the arm64 root filesystem
# (tools/pi/rootfs.sh) and profile the run's models there under qemu-user, as a Raspberry Pi 4
# would. Writes $RUN/pi-check/profile-aarch64.json and pip-list.txt for tests/test_pi.py. Root.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
RUN=$(cd "$REPO" && cd "${RUN:-runs/default}" && pwd)
export PI_ROOTFS=${PI_ROOTFS:-$HOME/.cache/verisparse/pi-rootfs}
ROOTFS=$PI_ROOTFS
OUT=$RUN/pi-check
# a Pi 4's CPU: QEMU's default "max" CPU has SME, and XNNPACK then computes wrong outputs
export QEMU_CPU=${QEMU_CPU:-cortex-a72}

[ -f "$RUN/model_int8.tflite" ] || { echo "pi-check: $RUN/model_int8.tflite missing: make run first" >&2; exit 2; }
"$HERE/rootfs.sh" build
trap '"$HERE/rootfs.sh" umount' EXIT
trap 'exit 130' INT TERM
"$HERE/rootfs.sh" mount

# pip inside reaches the host's index: DNS, pip configuration and the extra CA certificates
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOTFS/etc/pip.conf"
[ -d /etc/xdg/pip ] && mkdir -p "$ROOTFS/etc/xdg" && cp -r /etc/xdg/pip "$ROOTFS/etc/xdg/"
[ -d "$HOME/.config/pip" ] && mkdir -p "$ROOTFS/root/.config" && cp -r "$HOME/.config/pip" "$ROOTFS/root/.config/"
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    if ! diff -rq /usr/local/share/ca-certificates "$ROOTFS/usr/local/share/ca-certificates" >/dev/null 2>&1; then
        cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
        echo "pi-check: update-ca-certificates (emulated, about a minute)"
        chroot "$ROOTFS" update-ca-certificates >/dev/null
    fi
fi

VENV=/opt/verisparse-venv
[ -x "$ROOTFS$VENV/bin/python" ] || { echo "pi-check: python3 -m venv (emulated)"; chroot "$ROOTFS" python3 -m venv "$VENV"; }

# the checkout's files as git sees them (tracked and new, not the ignored .venv or runs)
rm -rf "$ROOTFS/src/verisparse" && mkdir -p "$ROOTFS/src/verisparse"
(cd "$REPO" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$ROOTFS/src/verisparse"
echo "pi-check: pip install the light package (emulated; a few minutes the first time)"
chroot "$ROOTFS" "$VENV/bin/pip" install -q --upgrade /src/verisparse
chroot "$ROOTFS" "$VENV/bin/pip" list --format=freeze > "$ROOTFS/tmp/pip-list.txt"

# the run's artifacts, with what the bytes check reads: firmware vectors and the certificate
rm -rf "$ROOTFS/work" && mkdir -p "$ROOTFS/work/run/firmware"
# profile.json: the x86 profile, whose reference bytes the aarch64 profile compares with its own
for f in model_int8.tflite model.onnx export.json certificate_model_int8.json profile.json; do
    [ -f "$RUN/$f" ] && cp "$RUN/$f" "$ROOTFS/work/run/"
done
for f in vs_vectors.c firmware.json; do
    [ -f "$RUN/firmware/$f" ] && cp "$RUN/firmware/$f" "$ROOTFS/work/run/firmware/"
done
echo "pi-check: verisparse profile under QEMU_CPU=$QEMU_CPU"
chroot "$ROOTFS" env HOME=/root "$VENV/bin/verisparse" profile /work/run --threads 1,2 --warmup 5 --runs 50 \
    --json /work/profile-aarch64.json
mkdir -p "$OUT"
cp "$ROOTFS/work/profile-aarch64.json" "$ROOTFS/tmp/pip-list.txt" "$OUT/"
echo "pi-check: wrote $OUT/profile-aarch64.json"
