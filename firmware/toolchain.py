"""Building with make / arm-none-eabi-gcc, running in qemu-system-arm, reading the results."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np

from verisparse.errors import VeriSparseError

INSTALL_HINT = ("install the toolchain: `make toolchain`, or "
                "`apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm`")


def require(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise VeriSparseError(f"{', '.join(missing)} not found; {INSTALL_HINT}")


def _run(cmd: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
    """cmd's completed process (its exit status is the caller's to judge); a hang becomes one
    VeriSparseError that says what to do, not a TimeoutExpired traceback. cmd runs in a process
    group of its own, killed whole on a hang: make's QEMU would otherwise run on, a core busy."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise VeriSparseError(f"{what} did not finish within {timeout} s; use fewer --vectors or a smaller "
                                  "model, or check the toolchain with `make toolchain`") from None
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def make(fw_dir: Path, *targets, timeout=600) -> str:
    require("make", "arm-none-eabi-gcc")
    r = _run(["make", "-s", "-C", str(fw_dir), *targets], f"building the firmware (make {' '.join(targets)})",
             timeout)
    if r.returncode:
        raise VeriSparseError(f"building the firmware failed (make {' '.join(targets)} in {fw_dir}):\n"
                              f"{(r.stdout + r.stderr)[-3000:]}")
    return r.stdout


def run_qemu(fw_dir: Path, timeout=300) -> str:
    """`make run` in QEMU; the harness ends with VS-END (QEMU's exit status is not reliable
    for semihosting exits on 32-bit Arm, so the marker is what counts)."""
    require("qemu-system-arm")
    r = _run(["make", "-s", "-C", str(fw_dir), "run"], "the firmware in QEMU", timeout)
    if "VS-END" not in r.stdout:
        raise VeriSparseError(f"the firmware did not run to the end in QEMU:\n{(r.stdout + r.stderr)[-3000:]}")
    return r.stdout


def parse_outputs(text: str, n: int, size: int) -> np.ndarray:
    rows = {}
    for m in re.finditer(r"^VS-OUT (\d+) ([0-9a-f]*)$", text, re.M):
        rows[int(m.group(1))] = np.frombuffer(bytes.fromhex(m.group(2)), np.int8)
    if sorted(rows) != list(range(n)) or any(len(r) != size for r in rows.values()):
        raise VeriSparseError(f"the firmware printed {len(rows)} of {n} outputs, or outputs of the wrong size")
    return np.stack([rows[i] for i in range(n)])


def parse_measurements(text: str) -> dict:
    """Instructions per inference from the SysTick readings, calibrated on the harness's
    2-instruction loop (under -icount shift=0, virtual time advances per instruction)."""
    t = re.search(r"^VS-TICKS empty=(\d+) model=(\d+) runs=(\d+) spin=(\d+) loops=(\d+)$", text, re.M)
    s = re.search(r"^VS-STACK (\d+)$", text, re.M)
    if not t or not s:
        raise VeriSparseError("the firmware did not print its measurements")
    empty, model, runs, spin, loops = map(int, t.groups())
    per_tick = 2 * loops / max(spin - empty / runs, 1)  # empty: `runs` pairs of readings, spin: one
    per_inference = (model - empty) * per_tick / runs
    return dict(instructions_per_inference=int(round(per_inference)),
                instructions_resolution=round(per_tick / runs, 1), instructions_per_tick=round(per_tick, 3),
                stack_bytes_measured=int(s.group(1)))


def section_sizes(elf: Path) -> dict:
    """Bytes per section from arm-none-eabi-size -A."""
    require("arm-none-eabi-size")
    r = _run(["arm-none-eabi-size", "-A", str(elf)], "arm-none-eabi-size", 60)
    if r.returncode:
        raise VeriSparseError(f"arm-none-eabi-size could not read {elf}: {r.stderr.strip()[-500:]}; "
                              "check the toolchain with `make toolchain`")
    sizes = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def run_host(fw_dir: Path, timeout=300) -> str:
    """`make host`: the model and kernels built for this machine under ASan and UBSan."""
    require("make", "gcc")
    r = _run(["make", "-s", "-C", str(fw_dir), "host"], "the host build under the sanitizers", timeout)
    if r.returncode or "VS-END" not in r.stdout:
        raise VeriSparseError(f"the host build failed or a sanitizer fired:\n{(r.stdout + r.stderr)[-3000:]}")
    return r.stdout
