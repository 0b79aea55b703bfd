"""The same model through Arm's CMSIS-NN, for the bench's comparison (not part of the product).

Given a project that `verisparse firmware` generated for mps2-an386, writes a second project
beside it whose vs_model_invoke calls CMSIS-NN (arm_convolve_wrapper_s8, arm_depthwise_conv_wrapper_s8,
arm_fully_connected_s8, arm_elementwise_add_s8, arm_avgpool_s8, arm_softmax_s8) with the same
quantized weights, multipliers and arena plan (less the windowed layers that run over their
input), and the same test harness, vectors and linker script. CMSIS-NN is built from its public
sources with GCC -Ofast for Cortex-M4 with the FPU and the DSP extension (-mfloat-abi=hard), as an
application would build it.

CMSIS_DIR holds CMSIS-NN/ (Include, Source) and CMSIS_6/ (CMSIS/Core/Include); from the mirrors:
    mkdir -p /tmp/cmsis/CMSIS-NN /tmp/cmsis/CMSIS_6
    git --git-dir=.../ARM-software+CMSIS-NN/repo archive HEAD | tar -x -C /tmp/cmsis/CMSIS-NN
    git --git-dir=.../ARM-software+CMSIS_6/repo archive HEAD | tar -x -C /tmp/cmsis/CMSIS_6
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from unittest import mock

import numpy as np

from verisparse.errors import VeriSparseError
from verisparse.firmware import emit
from verisparse.firmware import lower as lower_mod
from verisparse.firmware import plan as plan_mod
from verisparse.firmware import toolchain
from verisparse.tflite_graph import read_tflite

SOURCES = ("ConvolutionFunctions", "FullyConnectedFunctions", "NNSupportFunctions", "BasicMathFunctions",
           "PoolingFunctions", "SoftmaxFunctions")
SCRATCH_BYTES = 64 * 1024  # checked at run time against the wrappers' own buffer-size functions

MAKEFILE = """# CMSIS-NN build of the same model (bench/cmsis_nn.py)
NN      := {nn}
CORE    := {core}
CC      := arm-none-eabi-gcc
ARCH    := -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16
CFLAGS  := $(ARCH) -std=c99 -Ofast -ffunction-sections -fdata-sections -I. -I$(NN)/Include -I$(CORE)
LDFLAGS := $(ARCH) -nostartfiles -Wl,--gc-sections -T link.ld
# the integer kernels and their support; the float ones need headers an M4 build lacks
NN_ALL  := $(foreach d,{dirs},$(wildcard $(NN)/Source/$(d)/*.c))
NN_SRC  := $(foreach f,$(NN_ALL),$(if $(findstring _f16,$(notdir $(f)))$(findstring _f32,$(notdir $(f))),,$(f)))
NN_OBJ  := $(patsubst $(NN)/Source/%.c,build/nn/%.o,$(NN_SRC))
MODEL   := build/model.o build/startup.o $(NN_OBJ)
{qemu}
.PHONY: all run
all: fw.elf size.elf
build/nn/%.o: $(NN)/Source/%.c
\t@mkdir -p $(dir $@)
\t$(CC) $(CFLAGS) -c $< -o $@
build/%.o: %.c model.h
\t@mkdir -p $(dir $@)
\t$(CC) $(CFLAGS) -c $< -o $@
fw.elf: build/main.o build/platform.o build/vs_vectors.o $(MODEL) link.ld
\t$(CC) $(filter %.o,$^) $(LDFLAGS) --specs=rdimon.specs -o $@
size.elf: build/main_size.o $(MODEL) link.ld
\t$(CC) $(filter %.o,$^) $(LDFLAGS) --specs=nano.specs --specs=nosys.specs -o $@
run: fw.elf
\t$(QEMU) -kernel fw.elf
"""

HEAD = """/* vs_model_invoke through CMSIS-NN (bench/cmsis_nn.py); weights and offsets as in ../model.c */
#include <string.h>

#include "arm_nnfunctions.h"
#include "model.h"

static int8_t vs_arena[{arena}] __attribute__((aligned(4)));
static int8_t scratch[{scratch}] __attribute__((aligned(4)));
static cmsis_nn_context ctx = {{scratch, {scratch}}};

static int32_t scratch_used;
/* printing lives in the test harness (platform.c), so size.elf links no printf */
void vs_cmsis_report(const char *what, long n) __attribute__((weak));

static void need(int32_t bytes)
{{
    if (bytes > scratch_used) scratch_used = bytes;
    if (bytes > {scratch}) {{
        if (vs_cmsis_report) vs_cmsis_report("scratch buffer too small", bytes);
        for (;;) {{
        }}
    }}
}}
"""


# the scratch bytes the wrappers asked for, printed once, after the first (untimed) inference
REPORT = """    static int reported;
    if (!reported) {
        reported = 1;
        if (vs_cmsis_report) vs_cmsis_report("SCRATCH", scratch_used);
    }
"""


def _c_array(ctype: str, name: str, a) -> str:
    vals = ", ".join(str(int(v)) for v in np.ravel(a))
    return f"static const {ctype} {name}[{max(np.size(a), 1)}] __attribute__((aligned(4))) = {{{vals}}};\n"


def _calls(model_c: str) -> list[list[str]]:
    """the argument lists of vs_model_invoke's statements in our model.c (None for a comment)"""
    body = model_c.split("void vs_model_invoke(", 1)[1].split("{\n", 1)[1].split("\n}", 1)[0]
    out = []
    for line in (l.strip() for l in body.splitlines() if l.strip()):
        m = re.match(r"^(\w+)\((.*)\);$", line)
        out.append(None if m is None else [m.group(1)] + [a.strip() for a in m.group(2).split(",")])
    return out


def _layer_c(k: int, layer, call) -> tuple[str, str]:
    """(definitions, the statement in vs_model_invoke) for layer k"""
    p, a = layer.params, layer.arrays
    if call is None:
        return "", f"    /* layer {k}: {layer.op} shares its input's bytes */"
    kind = layer.kernel
    if kind in ("vs_conv2d", "vs_depthwise_conv2d"):
        src, dst = call[3], call[4]
        w = a["weights"]
        oc = p["out_c"]
        w2d = w.reshape(oc, -1) if kind == "vs_conv2d" else w.reshape(-1, oc).T
        raw = a["bias"].astype(np.int64) - p["in_offset"] * w2d.astype(np.int64).sum(axis=1)
        defs = (_c_array("int8_t", f"w{k}", w) + _c_array("int32_t", f"b{k}", raw)
                + _c_array("int32_t", f"m{k}", a["mult"]).replace("const ", "")
                + _c_array("int32_t", f"s{k}", a["shift"]).replace("const ", ""))
        tiles = (f"{{{p['stride_w']}, {p['stride_h']}}}, {{{p['pad_left']}, {p['pad_top']}}}, "
                 f"{{{p['dil_w']}, {p['dil_h']}}}, {{{p['act_min']}, {p['act_max']}}}")
        dims = (f"    const cmsis_nn_dims in_dims = {{1, {p['in_h']}, {p['in_w']}, {p['in_c']}}};\n"
                f"    const cmsis_nn_dims out_dims = {{1, {p['out_h']}, {p['out_w']}, {oc}}};\n"
                f"    const cmsis_nn_dims bias_dims = {{1, 1, 1, {oc}}};\n"
                f"    const cmsis_nn_per_channel_quant_params q = {{m{k}, s{k}}};\n")
        if layer.op == "FULLY_CONNECTED" and len(set(np.ravel(a["mult"]))) == 1 and len(set(np.ravel(a["shift"]))) == 1:
            defs += (f"static void layer{k}(const int8_t *in, int8_t *out)\n{{\n"
                     f"    const cmsis_nn_dims in_dims = {{{p['in_w']}, 1, 1, {p['in_c']}}};\n"
                     f"    const cmsis_nn_dims filter_dims = {{{p['in_c']}, 1, 1, {oc}}};\n"
                     f"    const cmsis_nn_dims bias_dims = {{1, 1, 1, {oc}}};\n"
                     f"    const cmsis_nn_dims out_dims = {{{p['in_w']}, 1, 1, {oc}}};\n"
                     f"    const cmsis_nn_fc_params fp = {{{p['in_offset']}, 0, {p['out_offset']}, "
                     f"{{{p['act_min']}, {p['act_max']}}}}};\n"
                     f"    const cmsis_nn_per_tensor_quant_params q = {{m{k}[0], s{k}[0]}};\n"
                     f"    need(arm_fully_connected_s8_get_buffer_size(&filter_dims));\n"
                     f"    arm_fully_connected_s8(&ctx, &fp, &q, &in_dims, in, &filter_dims, w{k}, &bias_dims, b{k}, "
                     f"&out_dims, out);\n}}\n")
        elif kind == "vs_conv2d":
            defs += (f"static void layer{k}(const int8_t *in, int8_t *out)\n{{\n{dims}"
                     f"    const cmsis_nn_dims filter_dims = {{{oc}, {p['k_h']}, {p['k_w']}, {p['in_c']}}};\n"
                     f"    const cmsis_nn_conv_params cp = {{{p['in_offset']}, {p['out_offset']}, {tiles}}};\n"
                     f"    need(arm_convolve_wrapper_s8_get_buffer_size(&cp, &in_dims, &filter_dims, &out_dims));\n"
                     f"    arm_convolve_wrapper_s8(&ctx, &cp, &q, &in_dims, in, &filter_dims, w{k}, &bias_dims, b{k}, "
                     f"&out_dims, out);\n}}\n")
        else:
            defs += (f"static void layer{k}(const int8_t *in, int8_t *out)\n{{\n{dims}"
                     f"    const cmsis_nn_dims filter_dims = {{1, {p['k_h']}, {p['k_w']}, {oc}}};\n"
                     f"    const cmsis_nn_dw_conv_params cp = {{{p['in_offset']}, {p['out_offset']}, "
                     f"{p['depth_mult']}, {tiles}}};\n"
                     f"    need(arm_depthwise_conv_wrapper_s8_get_buffer_size(&cp, &in_dims, &filter_dims, "
                     f"&out_dims));\n"
                     f"    arm_depthwise_conv_wrapper_s8(&ctx, &cp, &q, &in_dims, in, &filter_dims, w{k}, &bias_dims, "
                     f"b{k}, &out_dims, out);\n}}\n")
        return defs, f"    layer{k}({src}, {dst});"
    if kind == "vs_add":
        return "", (f"    arm_elementwise_add_s8({call[2]}, {call[3]}, {p['in1_offset']}, {p['in1_mult']}, "
                    f"{p['in1_shift']}, {p['in2_offset']}, {p['in2_mult']}, {p['in2_shift']}, {p['left_shift']}, "
                    f"{call[4]}, {p['out_offset']}, {p['out_mult']}, {p['out_shift']}, {p['act_min']}, "
                    f"{p['act_max']}, {p['size']});")
    if kind == "vs_average_pool2d":
        defs = (f"static void layer{k}(const int8_t *in, int8_t *out)\n{{\n"
                f"    const cmsis_nn_dims in_dims = {{1, {p['in_h']}, {p['in_w']}, {p['c']}}};\n"
                f"    const cmsis_nn_dims filter_dims = {{1, {p['k_h']}, {p['k_w']}, 1}};\n"
                f"    const cmsis_nn_dims out_dims = {{1, {p['out_h']}, {p['out_w']}, {p['c']}}};\n"
                f"    const cmsis_nn_pool_params pp = {{{{{p['stride_w']}, {p['stride_h']}}}, "
                f"{{{p['pad_left']}, {p['pad_top']}}}, {{{p['act_min']}, {p['act_max']}}}}};\n"
                f"    need(arm_avgpool_s8_get_buffer_size({p['out_w']}, {p['c']}));\n"
                f"    arm_avgpool_s8(&ctx, &pp, &in_dims, in, &filter_dims, &out_dims, out);\n}}\n")
        return defs, f"    layer{k}({call[2]}, {call[3]});"
    if kind == "vs_softmax":
        return "", (f"    arm_softmax_s8({call[2]}, {p['outer']}, {p['depth']}, {p['input_mult']}, "
                    f"{p['input_left_shift']}, {p['diff_min']}, {call[3]});")
    if kind == "vs_reshape":
        return "", f"    memcpy({call[3]}, {call[2]}, {call[1]});"
    raise VeriSparseError(f"bench/cmsis_nn.py: layer {k} ({layer.op}) has no CMSIS-NN call here; "
                          "leave this model out of the CMSIS-NN column")


def write_project(src: Path, ours: Path, out: Path, cmsis: Path) -> Path:
    """the CMSIS-NN project for the model src, beside our generated project `ours`"""
    nn, core = cmsis / "CMSIS-NN", cmsis / "CMSIS_6" / "CMSIS" / "Core" / "Include"
    if not (nn / "Include" / "arm_nnfunctions.h").is_file() or not (core / "cmsis_compiler.h").is_file():
        raise VeriSparseError(f"{cmsis} must hold CMSIS-NN/Include/arm_nnfunctions.h and "
                              "CMSIS_6/CMSIS/Core/Include/cmsis_compiler.h (see bench/cmsis_nn.py)")
    # CMSIS-NN takes dense weights: keep every layer dense when lowering for it
    with mock.patch.object(lower_mod, "choose", lambda w: None):
        prog = lower_mod.lower(read_tflite(src))
    # our arena plan, but no windowed layer's output over its input: CMSIS-NN's kernels do not
    # promise the access order that needs (element-wise ones in place, as our plan has them, give
    # the same bytes)
    with mock.patch.object(plan_mod, "SLIDING", frozenset()):
        pl = plan_mod.plan(prog)
    model_c = emit.model_c(prog, pl, src.name)
    calls = _calls(model_c)
    if len(calls) != len(prog.layers):
        raise VeriSparseError(f"{src}: {len(calls)} statements for {len(prog.layers)} layers")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("model.h", "main.c", "main_size.c", "startup.c", "link.ld", "vs_vectors.c", "vs_vectors.h",
                 "vs_platform.h"):
        shutil.copy(ours / name, out / name)
    # hard-float code may touch the FPU (printf in newlib's hard-float library): enable it first
    platform = (ours / "platform.c").read_text().replace(
        "void vs_platform_init(void)\n{\n",
        "void vs_platform_init(void)\n{\n"
        "    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;  /* CPACR: CP10, CP11 */\n",
        1)
    platform += ('\nvoid vs_cmsis_report(const char *what, long n)\n{\n'
                 '    printf("VS-CMSIS-%s %ld\\n", what, n);\n}\n')
    (out / "platform.c").write_text(platform)
    defs, body = [], []
    for k, (layer, call) in enumerate(zip(prog.layers, calls)):
        d, stmt = _layer_c(k, layer, call)
        defs.append(d)
        body.append(stmt)
    # the input and output where that plan puts them (vs_model_input/vs_model_output as emit writes them)
    io = model_c[model_c.index("int8_t *vs_model_input(void)"):model_c.index("void vs_model_invoke(void)")]
    (out / "model.c").write_text(HEAD.format(scratch=SCRATCH_BYTES, arena=pl.arena_bytes) + "".join(defs) + "\n" + io
                                 + "void vs_model_invoke(void)\n{\n" + "\n".join(body) + "\n" + REPORT + "}\n\n"
                                 + "void vs_model_run(const int8_t *input, int8_t *output)\n{\n"
                                 "    memcpy(vs_model_input(), input, VS_INPUT_SIZE);\n    vs_model_invoke();\n"
                                 "    memcpy(output, vs_model_output(), VS_OUTPUT_SIZE);\n}\n")
    qemu = re.search(r"^QEMU\s+:=.*\\\n.*$", (ours / "Makefile").read_text(), re.M).group(0)
    (out / "Makefile").write_text(MAKEFILE.format(nn=nn.resolve(), core=core.resolve(), dirs=" ".join(SOURCES),
                                                  qemu=qemu))
    return out


def run(project: Path, vectors: int, output_size: int) -> dict:
    """build and run in QEMU: outputs, instructions per inference, flash and RAM of size.elf"""
    toolchain.make(project, "all", timeout=1200)
    text = toolchain.run_qemu(project)
    m = toolchain.parse_measurements(text)
    sizes = toolchain.section_sizes(project / "size.elf")
    flash = sum(sizes.get(s, 0) for s in (".text", ".rodata", ".data", ".ARM.exidx"))
    # RAM as a product would size it: the scratch buffer cut to what the wrappers asked for
    used = int(re.search(r"^VS-CMSIS-SCRATCH (\d+)$", text, re.M).group(1))
    ram = sum(sizes.get(s, 0) for s in (".data", ".bss")) - SCRATCH_BYTES + used + m["stack_bytes_measured"]
    return dict(outputs=toolchain.parse_outputs(text, vectors, output_size),
                instructions=m["instructions_per_inference"], flash=flash, ram=ram)
