"""The machine a profile ran on, and what makes its numbers untrustworthy: emulation,
throttling (under-voltage, heat) and a power-saving CPU governor."""
from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
from pathlib import Path


def _read(path) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00 \n")
    except OSError:
        return None


def _cpuinfo() -> dict:
    info = {}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        k, sep, v = line.partition(":")
        if sep:
            info.setdefault(k.strip(), v.strip())
    return info


def model(cpuinfo=None) -> str:
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    return (_read("/proc/device-tree/model") or cpuinfo.get("Model") or cpuinfo.get("model name")
            or platform.processor() or "unknown")


def emulation(cpuinfo=None) -> str | None:
    """Why this looks like qemu-user (an ARM userland on another CPU), or None. qemu-user fakes
    uname, not the host kernel: its sysfs CPU type and (without an overlay) its cpuinfo."""
    machine = platform.machine().lower()
    if not (machine.startswith("aarch64") or machine.startswith("arm")):
        return None
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    modalias = _read("/sys/devices/system/cpu/modalias") or ""
    if modalias.startswith("cpu:type:x86"):
        return "the kernel's CPU type is x86 while Python runs as " + machine
    if "vendor_id" in cpuinfo or "GenuineIntel" in str(cpuinfo) or "AuthenticAMD" in str(cpuinfo):
        return "/proc/cpuinfo describes an x86 CPU while Python runs as " + machine
    if any(k.startswith("QEMU_") for k in os.environ):
        return "QEMU_* variables are set"
    return None


def temperatures() -> dict:
    """Celsius per thermal zone type (cpu-thermal on a Pi)."""
    out = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        t = _read(f"{zone}/temp")
        if t and t.lstrip("-").isdigit():
            out[_read(f"{zone}/type") or Path(zone).name] = int(t) / 1000
    return out


# vcgencmd get_throttled bits (Raspberry Pi firmware): now in the low bits, since boot at 16+
_THROTTLE_BITS = {0: "under-voltage", 1: "ARM frequency capped", 2: "throttled", 3: "soft temperature limit"}


def throttling() -> dict | None:
    """vcgencmd get_throttled where the Pi firmware tool exists; None elsewhere."""
    exe = shutil.which("vcgencmd")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=5).stdout
        value = int(out.strip().split("=")[1], 16)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return dict(raw=None, now=[], since_boot=[], error="vcgencmd get_throttled gave no reading")
    return dict(raw=hex(value), now=[n for b, n in _THROTTLE_BITS.items() if value >> b & 1],
                since_boot=[n for b, n in _THROTTLE_BITS.items() if value >> (b + 16) & 1])


def describe() -> dict:
    cpuinfo = _cpuinfo()
    governors = sorted({g for g in (_read(p) for p in glob.glob(
        "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")) if g})
    return dict(model=model(cpuinfo), machine=platform.machine(), system=platform.system(),
                python=platform.python_version(), cores=os.cpu_count(),
                governor=",".join(governors) or None, emulated=emulation(cpuinfo),
                throttling=throttling(), temperatures_before=temperatures())


def warnings(info: dict) -> list[str]:
    """What a reader must know before trusting the latencies."""
    out = []
    if info.get("emulated"):
        out.append(f"emulated ({info['emulated']}): the latencies are not this CPU's; the output bytes are")
    th = info.get("throttling")
    if th and (th["now"] or th["since_boot"]):
        out.append(f"THROTTLED (vcgencmd get_throttled={th['raw']}: now {', '.join(th['now']) or 'none'}; "
                   f"since boot {', '.join(th['since_boot']) or 'none'}): use the official power supply and "
                   "a heatsink or fan, then profile again")
    gov = info.get("governor")
    if gov and gov != "performance":
        out.append(f"CPU governor is {gov}: the first runs may be slow while the clock rises; for stable numbers "
                   "run `echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor`")
    hot = [f"{k} {v:.0f} C" for k, v in info.get("temperatures_after", {}).items() if v >= 80]
    if hot:
        out.append(f"hot ({', '.join(hot)}): a Pi throttles from 80 C (soft limit 60 C on some models)")
    return out
