"""The arena plan: input and output inside it, element-wise layers in place, windowed layers
running over their input. Every plan is replayed byte by byte against the kernels' access order
(vs_kernels.h): no byte is overwritten while a later read still needs it. And the arena is
compared with what TFLM's own planner needs for the same model."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from verisparse.errors import VeriSparseError
from verisparse.firmware import toolchain
from verisparse.firmware.generate import generate_firmware
from verisparse.firmware.lower import lower
from verisparse.firmware.plan import IN_PLACE, SLIDING, _pointwise, plan
from verisparse.firmware.tflm_arena import tflm_arena
from verisparse.tflite_graph import Graph, Operator, Tensor, read_tflite

MLPERF = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"
MLPERF_MODELS = ("kws_ref_model.tflite", "pretrainedResnet_quant.tflite", "ad01_int8.tflite")


def _replay(prog, pl):
    """Runs the plan on tags instead of values: each arena byte holds (tensor, element) of what was
    written there last. Reads must find the tensor they expect; windowed kernels are replayed pixel by
    pixel in raster order (window read, output pixel written, window read again: channels interleave;
    a dense pointwise convolution two pixels per pass, as its DSP build runs), element-wise ones
    element by element; others read all inputs, then write the output."""
    g, layers = prog.graph, prog.layers
    assert all(off % 4 == 0 for _, off in pl.where.values()), "every tensor and scratch buffer starts on a word"
    owner = np.full(pl.arena_bytes, -1, np.int64)
    index = np.full(pl.arena_bytes, -1, np.int64)
    producer = {}  # a reshape's output holds its input's bytes
    for k in sorted(pl.skipped):
        producer[layers[k].output] = producer.get(layers[k].inputs[0], layers[k].inputs[0])

    def span(t):
        n = int(np.prod(g.tensors[t].shape))
        return pl.where[t][1], n

    def write(t, lo, hi):
        off, _ = span(t)
        owner[off + lo:off + hi], index[off + lo:off + hi] = t, np.arange(lo, hi)

    def check(t, lo, hi, where):
        off, _ = span(t)
        want = producer.get(t, t)
        ok = (owner[off + lo:off + hi] == want).all() and (index[off + lo:off + hi] == np.arange(lo, hi)).all()
        assert ok, f"{where}: tensor {t} elements {lo}..{hi} were overwritten before they were read"

    write(prog.input.index, 0, span(prog.input.index)[1])
    for k, l in enumerate(layers):
        if k in pl.skipped:
            continue
        where = f"layer {k} ({l.op}, {l.kernel})"
        if l.kernel in SLIDING:
            p, x = l.params, l.inputs[0]
            in_c, out_c = p.get("in_c", p.get("c")), p.get("out_c", p.get("c"))
            dil_h, dil_w = p.get("dil_h", 1), p.get("dil_w", 1)
            scratch = pl.where.get(("scratch", k))
            pixels = [(oy, ox) for oy in range(p["out_h"]) for ox in range(p["out_w"])]
            # a dense pointwise convolution (DSP build) reads two pixels while it writes both
            step = 2 if l.kernel == "vs_conv2d" and _pointwise(p) else 1
            for q in range(0, len(pixels), step):
                run = pixels[q:q + step]
                if scratch is not None:  # the patch is gathered anew for every pixel
                    owner[scratch[1]:scratch[1] + l.scratch_bytes] = -2
                for when in ("before", "after"):
                    for oy, ox in run:
                        rows = [iy for iy in (oy * p["stride_h"] - p["pad_top"] + ky * dil_h for ky in range(p["k_h"]))
                                if 0 <= iy < p["in_h"]]
                        cols = [ix for ix in (ox * p["stride_w"] - p["pad_left"] + kx * dil_w for kx in range(p["k_w"]))
                                if 0 <= ix < p["in_w"]]
                        for iy in rows:
                            check(x, (iy * p["in_w"] + cols[0]) * in_c, (iy * p["in_w"] + cols[-1] + 1) * in_c,
                                  f"{where} pixel {oy},{ox} {when} writing it")
                    if when == "before":
                        for oy, ox in run:
                            pixel = (oy * p["out_w"] + ox) * out_c
                            write(l.output, pixel, pixel + out_c)
            continue
        n_out = span(l.output)[1]
        if l.kernel in IN_PLACE and k in pl.in_place:
            for i in range(n_out):
                for t in l.inputs:
                    n = span(t)[1]
                    check(t, i if n == n_out else 0, i + 1 if n == n_out else n, where)
                write(l.output, i, i + 1)
            continue
        o0 = span(l.output)[0]
        for t in l.inputs:  # separate buffers: no byte of an input under the output
            t0, n = span(t)
            assert o0 + n_out <= t0 or t0 + n <= o0, f"{where}: output overlaps input {t}"
            check(t, 0, n, where)
        write(l.output, 0, n_out)
    check(prog.output.index, 0, span(prog.output.index)[1], "the model's output at the end")


def _act(i, shape, scale=0.1, zp=-1):
    return Tensor(i, f"t{i}", shape, np.dtype(np.int8), np.array([scale]), np.array([zp]), 0, None)


def test_input_and_output_in_the_arena_and_element_wise_layers_in_place():
    """t0 -> RELU -> t1 -> TANH -> t2; ADD(t1, t2) -> t3. RELU may overwrite the model's input (read by
    nothing later), TANH may not overwrite t1 (ADD reads it), ADD may overwrite t1 or t2."""
    shape = (1, 4, 4, 2)
    t = [_act(i, shape) for i in range(4)]
    ops = [Operator("RELU", [0], [1]), Operator("TANH", [1], [2]),
           Operator("ADD", [1, 2], [3], dict(fused_activation="NONE"))]
    prog = lower(Graph(t, ops, [0], [3]))
    pl = plan(prog)
    assert pl.in_place == {0, 2}
    off = {i: pl.where[i][1] for i in range(4)}
    assert off[1] == off[0] and off[2] != off[1] and off[3] in (off[1], off[2])
    assert pl.arena_bytes == pl.lower_bound_bytes == 64  # two tensors of 32 bytes, input and output included
    _replay(prog, pl)


def test_zoo_plans_replay_without_a_clobbered_byte():
    from firmware_zoo import KERAS_MODELS
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        for name, build in KERAS_MODELS.items():
            if name in ("keras_float", "keras_hybrid", "keras_unsupported"):
                continue
            path = Path(d) / f"{name}.tflite"
            path.write_bytes(build())
            prog = lower(read_tflite(path))
            _replay(prog, plan(prog))


@pytest.mark.skipif(not MLPERF.is_dir(), reason=f"the MLPerf Tiny models are not in {MLPERF}")
def test_mlperf_tiny_arenas_are_no_larger_than_tflms_and_replay_cleanly(capsys):
    """Our arena (activations, input, output, convolution patches) against the head of TFLM's arena
    (the tensors its planner places) for the same model; printed as a table."""
    rows = []
    for name in MLPERF_MODELS:
        data = (MLPERF / name).read_bytes()
        prog = lower(read_tflite(MLPERF / name))
        pl = plan(prog)
        _replay(prog, pl)
        tflm = tflm_arena(data, 10 * len(data) + 4 * pl.arena_bytes + (1 << 16))
        assert pl.lower_bound_bytes <= pl.arena_bytes <= tflm["head_bytes"], (name, pl.arena_bytes, tflm)
        rows.append(f"{name:32s} arena {pl.arena_bytes:6d} B (bound {pl.lower_bound_bytes:6d})   TFLM planner "
                    f"{tflm['head_bytes']:6d} B, TFLM arena with persistent data {tflm['total_bytes']:6d} B")
    with capsys.disabled():
        print("\n" + "\n".join(rows))
    # ResNet-8's first block: TFLM holds its input, both convolutions' outputs; the plan lets each
    # convolution's output run over its input
    resnet = plan(lower(read_tflite(MLPERF / "pretrainedResnet_quant.tflite")))
    assert resnet.arena_bytes < 0.75 * 49152


def test_replay_catches_a_plan_that_overwrites_bytes_still_needed(monkeypatch):
    """The replay is a real check: a lead of 0 lets a convolution's first output pixel overwrite input
    rows the next pixels read, and an ADD moved a word up overwrites inputs not read yet."""
    import verisparse.firmware.plan as planner
    from firmware_zoo import keras_cnn
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cnn.tflite"
        path.write_bytes(keras_cnn())
        prog = lower(read_tflite(path))
    monkeypatch.setattr(planner, "_lead", lambda kernel, p: 0)
    with pytest.raises(AssertionError, match="overwritten before they were read"):
        _replay(prog, planner.plan(prog))
    t = [_act(i, (1, 4, 4, 2)) for i in range(3)]
    prog = lower(Graph(t, [Operator("RELU", [0], [1]), Operator("ADD", [1, 1], [2], dict(fused_activation="NONE"))],
                       [0], [2]))
    pl = plan(prog)
    pl.where[2] = ("arena", pl.where[1][1] + 4)
    pl.arena_bytes += 4
    with pytest.raises(AssertionError, match="overwritten before they were read"):
        _replay(prog, pl)
    pl.where[2] = ("arena", pl.where[1][1] + 1)  # and no tensor starts off a word boundary
    with pytest.raises(AssertionError, match="starts on a word"):
        _replay(prog, pl)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="`make test` installs the toolchain")
@pytest.mark.skipif(not MLPERF.is_dir(), reason=f"the MLPerf Tiny models are not in {MLPERF}")
def test_mlperf_tiny_ram_is_the_arena_and_little_else(tmp_path, capsys):
    """The size build (model, kernels, startup; the input and output in the arena): .data + .bss
    within arena + 2 KB on Cortex-M4 and Cortex-M0."""
    rows = []
    for name in MLPERF_MODELS:
        for board in ("mps2-an386", "microbit"):
            fw = tmp_path / f"{name}-{board}"
            try:
                r = generate_firmware(MLPERF / name, board, fw, vectors=1)
            except VeriSparseError as e:  # the micro:bit's 16 KB RAM, 256 KB flash: refused with the numbers
                assert board == "microbit" and "more than microbit's" in str(e), e
                continue
            toolchain.make(fw, "size.elf")
            sec = toolchain.section_sizes(fw / "size.elf")
            ram = sec.get(".data", 0) + sec.get(".bss", 0)
            assert ram <= r["arena"]["bytes"] + 2048, (name, board, sec, r["arena"])
            rows.append(f"{name:32s} {board:11s} .data + .bss {ram:6d} B, arena {r['arena']['bytes']:6d} B")
    assert len(rows) >= 3
    with capsys.disabled():
        print("\n" + "\n".join(rows))


# (kind, in_h, in_w, in_c, out_c, k_h, k_w, stride, dilation, pad): every windowed kernel's paths,
# the DSP ones included (pairs of pixels across rows, odd channel counts, border windows)
_SLIDE_CASES = [
    ("vs_conv2d", 5, 1, 3, 8, 1, 1, 1, 1, 0),  # pointwise, one pixel a row: every pair spans two rows
    ("vs_conv2d", 5, 1, 8, 5, 1, 1, 1, 1, 0),
    ("vs_conv2d", 3, 3, 4, 6, 1, 1, 1, 1, 0),  # nine pixels: a pair across rows, one left over
    ("vs_conv2d", 4, 2, 5, 2, 1, 1, 1, 1, 0),
    ("vs_conv2d", 1, 1, 10, 7, 1, 1, 1, 1, 0),  # fully connected
    ("vs_conv2d", 5, 4, 3, 5, 3, 3, 1, 1, 1),
    ("vs_conv2d", 7, 5, 4, 6, 3, 3, 2, 1, 1),
    ("vs_conv2d", 5, 5, 4, 8, 1, 1, 2, 1, 0),  # strided 1x1: patches gathered
    ("vs_conv2d", 7, 7, 3, 5, 3, 3, 1, 2, 2),
    ("vs_conv2d_sparse", 5, 4, 3, 5, 3, 3, 1, 1, 1),
    ("vs_conv2d_sparse", 7, 5, 4, 6, 3, 3, 2, 1, 1),
    ("vs_conv2d_sparse", 3, 3, 4, 6, 1, 1, 1, 1, 0),
    ("vs_depthwise_conv2d", 6, 5, 6, 6, 3, 3, 1, 1, 1),
    ("vs_depthwise_conv2d", 7, 6, 4, 4, 3, 3, 2, 1, 1),
    ("vs_depthwise_conv2d", 5, 5, 3, 6, 3, 3, 1, 1, 1),  # depth multiplier 2
    ("vs_depthwise_conv2d", 7, 7, 8, 8, 3, 3, 1, 2, 2),
    ("vs_depthwise_conv2d", 6, 6, 8, 8, 3, 3, 1, 1, 0),  # no border: the input read where it lies
    ("vs_max_pool2d", 6, 5, 5, 5, 2, 2, 2, 1, 0),
    ("vs_max_pool2d", 5, 5, 4, 4, 3, 3, 1, 1, 1),
    ("vs_average_pool2d", 6, 6, 8, 8, 2, 2, 2, 1, 0),
    ("vs_average_pool2d", 5, 4, 6, 6, 3, 3, 1, 1, 1),
]
_KIND = {"vs_conv2d": "CONV", "vs_conv2d_sparse": "CONV_SPARSE", "vs_depthwise_conv2d": "DEPTHWISE",
         "vs_max_pool2d": "MAX_POOL", "vs_average_pool2d": "AVERAGE_POOL"}


def _slide_cases(leads=None):
    """sliding_cases.h for tests/firmware_sliding.c, and each case's lead: the plan's, or `leads`."""
    from verisparse.firmware.plan import _lead
    rows, out = [], []
    for j, (kernel, h, w, c, oc, k, _, s, d, pad) in enumerate(_SLIDE_CASES):
        oh, ow = (h + 2 * pad - d * (k - 1) - 1) // s + 1, (w + 2 * pad - d * (k - 1) - 1) // s + 1
        p = dict(in_h=h, in_w=w, in_c=c, out_h=oh, out_w=ow, out_c=oc, k_h=k, k_w=k, stride_h=s, stride_w=s,
                 dil_h=d, dil_w=d, pad_top=pad, pad_left=pad)
        out.append(_lead(kernel, p) if leads is None else leads[j])
        rows.append(f"    {{{_KIND[kernel]}, {h}, {w}, {c}, {oh}, {ow}, {oc}, {k}, {k}, {s}, {s}, {d}, {d}, {pad}, "
                    f"{pad}, {out[-1]}}},")
    return "static const vs_case cases[] = {\n" + "\n".join(rows) + "\n};\n", out


def _slide_results(text):
    import re
    found = dict(re.findall(r"^VS-CASE (\d+) (same|differs)$", text, re.M))
    assert len(found) == len(_SLIDE_CASES) and "VS-END" in text, text[-2000:]
    return [found[str(i)] for i in range(len(_SLIDE_CASES))]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host C compiler")
def test_windowed_kernels_running_over_their_input_give_the_same_bytes_on_the_host(tmp_path):
    """The plain C kernels (M0, M3, host), under ASan/UBSan, with their output `lead` bytes before their
    input in one buffer (the least the plan allows; it rounds up to a word) give the bytes they give with
    separate buffers. The check is real: with the output placed on the input itself (lead 0), every
    convolution case differs."""
    import subprocess
    here = Path(__file__).resolve().parent
    kernels = here.parent / "firmware" / "kernels"
    results = {}
    for name, leads in (("planned", None), ("on_the_input", [0] * len(_SLIDE_CASES))):
        (tmp_path / "sliding_cases.h").write_text(_slide_cases(leads)[0])
        exe = tmp_path / f"sliding_{name}"
        subprocess.run(["gcc", "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
                        "-fno-sanitize-recover=all", f"-I{kernels}", f"-I{tmp_path}", str(here / "firmware_sliding.c"),
                        *map(str, sorted(kernels.glob("*.c"))), "-o", str(exe)], check=True)
        results[name] = _slide_results(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout)
    assert results["planned"] == ["same"] * len(_SLIDE_CASES), results["planned"]
    convs = [r for r, case in zip(results["on_the_input"], _SLIDE_CASES) if case[0].startswith("vs_conv2d")]
    assert convs == ["differs"] * len(convs), results["on_the_input"]


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                    reason="`make test` installs the toolchain (make toolchain)")
def test_dsp_kernels_running_over_their_input_give_the_same_bytes_on_cortex_m4(tmp_path):
    """The same cases built for Cortex-M4 (DSP extension: two pixels per pass, four channels per load)
    in QEMU. A pointwise convolution with one pixel a row and fewer output than input channels needs
    the pass rule in plan._lead: with the row rule's lead alone (5 bytes, not 10) its bytes differ."""
    from firmware_zoo import keras_mlp
    src = tmp_path / "mlp.tflite"
    src.write_bytes(keras_mlp())
    fw = tmp_path / "fw"
    generate_firmware(src, "mps2-an386", fw, vectors=1)  # a project for its startup, platform and Makefile
    (fw / "main.c").write_text((Path(__file__).resolve().parent / "firmware_sliding.c").read_text())
    # every code path of the kernels, not just those the MLP's layers run (its kernels/vs_config.h)
    shipped = Path(__file__).resolve().parents[1] / "firmware" / "kernels" / "vs_config.h"
    (fw / "kernels" / "vs_config.h").write_text(shipped.read_text())
    header, leads = _slide_cases()
    assert leads[1] == 10
    for leads, expect in ((None, ["same"] * len(_SLIDE_CASES)), (leads[:1] + [5] + leads[2:], None)):
        (fw / "sliding_cases.h").write_text(_slide_cases(leads)[0])
        results = _slide_results(toolchain.run_qemu(fw, timeout=120))
        if expect:
            assert results == expect, results
        else:
            assert results[1] == "differs" and results.count("differs") == 1, results
