"""Instructions per layer of a generated firmware project, for the bench (not the product).

Copies the project, puts a SysTick reading between the kernel calls of vs_model_invoke, runs it
once in QEMU with -icount shift=0, and converts ticks to instructions with the harness's own
calibration loop. The readings themselves cost a few instructions per layer (subtracted:
the empty reading's cost is measured too)."""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from verisparse.firmware import toolchain

MARK = "    vs_prof_mark();\n"
PRINT = """
    printf("VS-PROF %u", (unsigned)vs_prof_count);
    for (unsigned k = 1; k < vs_prof_count; ++k)
        printf(" %lu", (unsigned long)(vs_prof_ticks[k] - vs_prof_ticks[k - 1]));
    printf("\\n");
"""
GLOBALS = """
#include "vs_platform.h"
uint64_t vs_prof_ticks[256];
unsigned vs_prof_count;
static void vs_prof_mark(void)
{
    if (vs_prof_count < 256) vs_prof_ticks[vs_prof_count++] = vs_platform_ticks();
}
"""


def instrument(model_c: str) -> tuple[str, list[str]]:
    """model.c with a mark before and after every statement of vs_model_invoke, and the calls"""
    head, body = model_c.split("void vs_model_invoke(", 1)
    sig, rest = body.split("{\n", 1)
    inner, tail = rest.split("\n}", 1)
    calls = [l.strip() for l in inner.splitlines() if l.strip()]
    marked = "    vs_prof_count = 0;\n" + MARK + "".join(f"    {c}\n{MARK}" for c in calls) + "    vs_prof_mark();"
    return head + GLOBALS + "void vs_model_invoke(" + sig + "{\n" + marked + "\n}" + tail, calls


def layer_instructions(fw_dir: Path) -> list[tuple[str, int]]:
    """(kernel call, instructions) per statement of vs_model_invoke, from one run in QEMU"""
    with tempfile.TemporaryDirectory(prefix="vs-prof-") as tmp:
        d = Path(tmp) / "fw"
        shutil.copytree(fw_dir, d, ignore=shutil.ignore_patterns("*.elf"))  # objects kept: only model.c, main.c change
        model_c, calls = instrument((d / "model.c").read_text())
        (d / "model.c").write_text(model_c)
        main = (d / "main.c").read_text()
        main = main.replace('#include "vs_vectors.h"\n', '#include "vs_vectors.h"\nextern uint64_t vs_prof_ticks[];\n'
                            'extern unsigned vs_prof_count;\n', 1)
        main = main.replace('    printf("VS-END\\n");', PRINT + '    printf("VS-END\\n");', 1)
        (d / "main.c").write_text(main)
        toolchain.make(d, "fw.elf")
        text = toolchain.run_qemu(d)
    per_tick = toolchain.parse_measurements(text)["instructions_per_tick"]
    m = re.search(r"^VS-PROF (\d+)((?: \d+)*)$", text, re.M)
    ticks = [int(t) for t in m.group(2).split()]
    # the last interval holds only the marks' own cost: take it off every layer
    empty = ticks[-1]
    return [(c, max(0, int(round((t - empty) * per_tick)))) for c, t in zip(calls, ticks[:-1])]
