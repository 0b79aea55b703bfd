"""Target boards, and writing a generated C project for one of them.

The four mps2 boards are Arm's FPGA images that qemu-system-arm emulates, and microbit is the
BBC micro:bit's nRF51 (Cortex-M0, 16 KB of RAM) as QEMU emulates it; firmware for them prints
through semihosting. `generic` is a plain Cortex-M project to port to a real board
(boards/generic/README.md): same model and kernels, a UART hook instead of semihosting."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from verisparse.errors import VeriSparseError

HERE = Path(__file__).parent
STACK_BYTES = 8 * 1024  # reserved for the test harness's printf; the model itself needs far less
SMALL_STACK_BYTES = 3 * 1024  # on boards with little RAM: newlib's printf fits, and the model's frames


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    cpu: str  # gcc -mcpu
    qemu_machine: str | None  # None: no emulator (generic)
    flash_origin: int
    flash_bytes: int
    ram_origin: int
    ram_bytes: int
    stack_bytes: int = STACK_BYTES


MB = 1 << 20
BOARDS = {b.name: b for b in [
    Board("mps2-an385", "Arm MPS2 AN385, Cortex-M3", "cortex-m3", "mps2-an385", 0x0, 4 * MB, 0x20000000, 4 * MB),
    Board("mps2-an386", "Arm MPS2 AN386, Cortex-M4", "cortex-m4", "mps2-an386", 0x0, 4 * MB, 0x20000000, 4 * MB),
    Board("mps2-an500", "Arm MPS2 AN500, Cortex-M7", "cortex-m7", "mps2-an500", 0x0, 4 * MB, 0x20000000, 4 * MB),
    # Cortex-M33 with TrustZone boots secure: code and data go to the secure aliases of SSRAM1
    # (0x10000000) and SSRAM2/3 (0x38000000) of QEMU's mps2-tz memory map.
    Board("mps2-an505", "Arm MPS2+ AN505, Cortex-M33", "cortex-m33", "mps2-an505", 0x10000000, 4 * MB,
          0x38000000, 4 * MB),
    # ARMv6-M: no DSP extension, so the kernels' plain C runs; the nRF51822 has 256 KB flash, 16 KB RAM.
    Board("microbit", "BBC micro:bit (nRF51822), Cortex-M0", "cortex-m0", "microbit", 0x0, 256 * 1024, 0x20000000,
          16 * 1024, SMALL_STACK_BYTES),
    # Defaults fit an STM32F4 (1 MB flash at 0x08000000, 128 KB SRAM); edit link.ld for yours.
    Board("generic", "generic Cortex-M, port to your board", "cortex-m4", None, 0x08000000, 1 * MB,
          0x20000000, 128 * 1024),
]}


def get_board(name: str) -> Board:
    if name not in BOARDS:
        raise VeriSparseError(f"unknown board {name!r}; choose one of {', '.join(BOARDS)}")
    return BOARDS[name]


def fill(template: str, values: dict) -> str:
    for k, v in values.items():
        template = template.replace(f"@{k}@", str(v))
    return template


def project_files(board: Board, sources: dict[str, str]) -> dict[str, str]:
    """The whole project, name -> text: the generated sources, the kernels and the board files. A
    generated kernels/vs_config.h among the sources replaces the kernels' own."""
    qemu = board.qemu_machine is not None
    values = dict(BOARD=board.name, DESCRIPTION=board.description, CPU=board.cpu,
                  QEMU_MACHINE=board.qemu_machine or "none", QEMU_CPU=board.cpu,
                  FLASH_ORIGIN=hex(board.flash_origin), FLASH_SIZE=board.flash_bytes,
                  RAM_ORIGIN=hex(board.ram_origin), RAM_SIZE=board.ram_bytes, STACK_SIZE=board.stack_bytes,
                  HARNESS_SPECS="--specs=rdimon.specs" if qemu else "--specs=nano.specs --specs=nosys.specs",
                  RUN_HOW=" in QEMU, instructions counted with -icount shift=0" if qemu else
                  " (generic: flash it with your vendor's tools)",
                  RUN_RULE="$(QEMU) -kernel fw.elf" if qemu else
                  "@echo 'generic board: flash fw.elf with your tools (see README.md)'; false")
    files = kernel_files()
    files.update(sources)
    files["Makefile"] = fill((HERE / "boards/common/Makefile.in").read_text(), values)
    files["link.ld"] = fill((HERE / "boards/common/link.ld.in").read_text(), values)
    for name in ("startup.c", "main.c", "main_size.c", "vs_platform.h"):
        files[name] = (HERE / "boards/common" / name).read_text()
    files["host_main.c"] = (HERE / "boards/host/host_main.c").read_text()
    files["platform.c"] = (HERE / "boards" / ("qemu" if qemu else "generic") / "platform.c").read_text()
    if not qemu:
        files["README.md"] = (HERE / "boards/generic/README.md").read_text()
    return files


def kernel_files() -> dict[str, str]:
    """kernels/<name> -> text of every kernel source and header."""
    return {f"kernels/{p.name}": p.read_text() for p in sorted((HERE / "kernels").iterdir())
            if p.suffix in (".c", ".h")}
