"""Firmware: fixed-point helpers, sparse storage, arena plan, the generated C under host
sanitizers, bad input, and (slow) the whole zoo in QEMU, byte for byte against TFLM and LiteRT."""
import concurrent.futures
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import MODES, ZOO
from firmware_zoo import KERAS_MODELS, keras_float, keras_hybrid, keras_unsupported
from verisparse.cli import main
from verisparse.firmware import toolchain
from verisparse.firmware.generate import generate_firmware
from verisparse.firmware.lower import lower
from verisparse.firmware.plan import plan
from verisparse.firmware.reference import run_litert, run_tflm
from verisparse.firmware.sparse import encode
from verisparse.firmware.vectors import make_vectors
from verisparse.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from verisparse.tflite_graph import read_tflite

needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                               reason="`make test` installs the toolchain (make toolchain)")


def _gemmlowp(x, q, shift):
    """Scalar MultiplyByQuantizedMultiplier with Python ints, written from the definition."""
    left, right = max(shift, 0), max(-shift, 0)
    a = ((x << left) + 2 ** 31) % 2 ** 32 - 2 ** 31
    if a == q == -2 ** 31:
        high = 2 ** 31 - 1
    else:
        ab = a * q
        s = ab + (2 ** 30 if ab >= 0 else 1 - 2 ** 30)
        high = s // 2 ** 31 if s >= 0 else -((-s) // 2 ** 31)
    mask = (1 << right) - 1
    return (high >> right) + ((high & mask) > (mask >> 1) + (high < 0))


def test_fixedpoint_against_scalar_definition():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 4000), [0, 1, -1, 2 ** 31 - 1, -2 ** 31]])
    for m in [0.5, 0.75, 1e-3, 3.1e-5, 0.9999999, 1.5, 7.25, 2.0 ** -31, rng.uniform(0, 1)]:
        q, s = quantize_multiplier(m)
        assert 2 ** 30 <= q < 2 ** 31 and abs(q * 2.0 ** (s - 31) - m) <= m * 2 ** -30
        got = multiply_by_quantized_multiplier(x, q, s)
        want = [_gemmlowp(int(v), q, s) for v in x]
        np.testing.assert_array_equal(got, want)
    assert quantize_multiplier(0.0) == (0, 0) and quantize_multiplier(2.0 ** -40) == (0, 0)
    # M = 0.25 rounded twice: 5 * 0.25 = 1.25 -> 2.5 (half up) -> 3 -> 3 / 2 = 1.5 (half away) -> 2
    assert multiply_by_quantized_multiplier(np.array([3, -3, 5, -5]), 1 << 30, -1).tolist() == [1, -1, 2, -1]


def test_sparse_encoding_round_trips_and_splits_long_steps():
    rng = np.random.default_rng(1)
    w = (rng.integers(-127, 128, (6, 3, 3, 200)) * (rng.random((6, 3, 3, 200)) < 0.05)).astype(np.int8)
    w[2] = 0
    w[3, 2, 2, 199], w[3, 0, 0, 0] = 5, -7  # a step of 1799 positions
    s = encode(w)
    dense = np.zeros((6, 1800), np.int8)
    d, v = iter(s.delta.tolist()), iter(s.value.tolist())
    for oc, n in enumerate(s.count):
        pos = 0
        for _ in range(n):
            pos += next(d)
            dense[oc, pos] += next(v)
    np.testing.assert_array_equal(dense, w.reshape(6, -1))
    assert s.count[2] == 0 and s.delta.max() <= 255


def test_accumulators_that_could_overflow_int32_are_refused():
    from verisparse.errors import VeriSparseError
    from verisparse.firmware.lower import _folded_bias
    w = np.full((2, 1000), 127, np.int8)
    fits = np.array([2 ** 31 - 1 - 1000 * 127 * 256, 0])  # folded with zero point -128, then 1000 * 127 * 128
    assert _folded_bias(fits, w, 128, "layer").dtype == np.int32
    with pytest.raises(VeriSparseError, match="could overflow"):
        _folded_bias(fits + 1, w, 128, "layer")


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("keras")
    paths = {}
    for name, build in KERAS_MODELS.items():
        paths[name] = root / f"{name}.tflite"
        paths[name].write_bytes(build())
    return paths


def test_arena_plan_is_minimal_and_never_overlaps_live_tensors(keras_models):
    for name, path in keras_models.items():
        prog = lower(read_tflite(path))
        pl = plan(prog)
        # greedy placement reaches the bound on chains (one live branch); branching graphs may need more
        chain = name in ("keras_cnn", "keras_residual", "keras_mlp")
        assert pl.arena_bytes == pl.lower_bound_bytes if chain else pl.arena_bytes >= pl.lower_bound_bytes
        # tensors of one layer share bytes only as the kernels' access order allows (vs_kernels.h):
        # replayed byte by byte, no byte is overwritten while a later read needs it
        from test_firmware_memory import _replay
        _replay(prog, pl)


def _expected(path, prog, n=200):
    data = path.read_bytes()
    vec = make_vectors(n, prog.input.shape[1:], float(prog.input.scale[0]), int(prog.input.zero_point[0]))
    return vec, run_tflm(data, prog, vec), run_litert(data, prog, vec)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host C compiler")
def test_host_build_under_sanitizers_matches_tflm(keras_models, tmp_path):
    """model.c and the kernels with host gcc, -Wall -Wextra -Werror, ASan and UBSan, on random
    inputs and the extremes (all -128, all 127): every byte equals TFLM's."""
    ops = set()
    for name, path in keras_models.items():
        out = tmp_path / name
        generate_firmware(path, "mps2-an386", out, vectors=200)
        prog = lower(read_tflite(path))
        ops |= {l.op for l in prog.layers} | ({"QUANTIZE"} if prog.float_input else set())
        ops |= {"DEQUANTIZE"} if prog.float_output else set()
        vec, tflm, lite = _expected(path, prog)
        assert (vec[0] == -128).all() and (vec[1] == 127).all()
        fw = toolchain.parse_outputs(toolchain.run_host(out), 200, int(np.prod(prog.output.shape)))
        np.testing.assert_array_equal(fw, tflm, err_msg=name)
        if any(l.op == "RELU6" and l.litert_differs for l in prog.layers):
            pass  # LiteRT rescales a RELU6 whose output scale differs, TFLM does not (firmware.json says so)
        elif "FULLY_CONNECTED" not in {l.op for l in prog.layers}:
            np.testing.assert_array_equal(fw, lite, err_msg=name)
        elif "SOFTMAX" not in {l.op for l in prog.layers}:  # LiteRT's reference FULLY_CONNECTED rounds once
            assert np.abs(fw.astype(int) - lite).max() <= 1
    assert ops >= {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "AVERAGE_POOL_2D", "ADD",
                   "RESHAPE", "QUANTIZE", "DEQUANTIZE", "SOFTMAX", "MEAN", "CONCATENATION", "RELU", "RELU6",
                   "LEAKY_RELU", "MUL", "SUB", "MAXIMUM", "MINIMUM", "LOGISTIC", "TANH", "HARD_SWISH"}
    src = (tmp_path / "keras_cnn" / "model.c").read_text()
    assert "vs_conv2d_sparse" in src and "malloc" not in src


def _cli(*args):
    r = CliRunner().invoke(main, list(map(str, args)))
    return r.exit_code, r.output


def test_bad_input_is_one_clear_message(tmp_path, keras_models):
    good = keras_models["keras_cnn"].read_bytes()
    cases = {
        "truncated.tflite": (good[: len(good) // 3], "not a valid TFLite flatbuffer"),
        "corrupt.tflite": (good[:8] + b"\xff" * 64 + good[72:], "not a valid TFLite flatbuffer"),
        "text.tflite": (b"this is not a model", "not a TFLite model"),
        "float.tflite": (keras_float(), "float, not quantized int8"),
        "hybrid.tflite": (keras_hybrid(), "float, not quantized int8"),
        "transpose.tflite": (keras_unsupported(), "operator 0 is TRANSPOSE (output tensor "),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        code, out = _cli("firmware", tmp_path / name, "--out", tmp_path / "fw")
        assert code == 2 and message in out and "Traceback" not in out, (name, out)
        if name == "transpose.tflite":  # which op, where, and what to do
            assert "which the firmware does not support: replace the layer" in out, out
    (tmp_path / "run").mkdir()
    code, out = _cli("firmware", tmp_path / "run")
    assert code == 2 and "run `verisparse export" in out
    code, out = _cli("firmware", keras_models["keras_cnn"], "--board", "stm32", "--out", tmp_path / "fw")
    assert code == 2 and "unknown board" in out


def test_model_larger_than_the_board_says_the_numbers(tmp_path):
    import tensorflow as tf
    from firmware_zoo import _convert

    model = tf.keras.Sequential([tf.keras.layers.Input((160, 160, 3), batch_size=1),
                                 tf.keras.layers.Conv2D(8, 3, padding="same"), tf.keras.layers.Conv2D(4, 3)])
    path = tmp_path / "big.tflite"
    path.write_bytes(_convert(model, (160, 160, 3)))
    code, out = _cli("firmware", path, "--board", "generic", "--out", tmp_path / "fw")
    assert code == 2 and "+ 15360000 for 200 test vectors" in out and "more than generic's 1048576 bytes" in out
    code, out = _cli("firmware", path, "--board", "generic", "--out", tmp_path / "fw", "--vectors", 1)
    # conv 2's output (158x158x4) runs over its input (160x160x8), so conv 1 needs the most: its input
    # (160x160x3), output (160x160x8) and scratch (two 3x3x3 patches, 54 bytes, 56 aligned), all in the arena
    assert code == 2 and "needs 281656 bytes of activation arena (input and output included)" in out, out
    assert "more than generic's 131072 bytes of RAM" in out


@needs_arm
def test_cli_run_on_a_project_run_directory(zoo_exports):
    """The command on a run directory: builds, runs in QEMU on M4, writes both firmware.json."""
    run, _ = zoo_exports[("cnn_4layer", "unstructured")]
    code, out = _cli("firmware", run, "--board", "mps2-an386", "--out", run / "firmware", "--run")
    assert code == 0, out
    assert "200/200 vectors identical to TFLM" in out
    r = json.loads((run / "firmware.json").read_text())
    assert r == json.loads((run / "firmware" / "firmware.json").read_text())
    assert r["exactness"]["exact"] and r["exactness"]["litert_reference"]["differing_bytes"] == 0
    assert r["flash"]["within_target"] and r["ram"]["within_target"], (r["flash"], r["ram"])
    assert r["instructions"]["per_inference"] > r["totals"]["effective_macs"]
    assert any(l.get("storage") == "sparse" for l in r["layers"])


@needs_arm
@pytest.mark.slow
def test_zoo_is_bit_exact_in_qemu(zoo_exports, keras_models, tmp_path):
    """Every zoo model in every sparsity mode and the Keras op coverage models, on Cortex-M3
    and Cortex-M4: at least 200 vectors each, every byte equal to TFLM's (and LiteRT's where
    it rounds the same way), and to the host build's under the sanitizers. M7 and M33 on one
    model each; instruction counts repeatable."""
    sources = {f"{a}-{m}": zoo_exports[(a, m)][0] for a in ZOO for m in MODES}
    sources.update(keras_models)

    def check(name, src):
        for board in ("mps2-an385", "mps2-an386"):
            fw = tmp_path / f"{name}-{board}"
            r = generate_firmware(src, board, fw, run=True, vectors=200)
            e = r["exactness"]
            assert e["exact"] and e["vectors"] == 200 and e["tflm"]["identical_vectors"] == 200, (name, board, e)
        # the same C on the host under ASan/UBSan, same vectors, same bytes as TFLM
        tfl = src / "model_int8.tflite" if src.is_dir() else src
        prog = lower(read_tflite(tfl))
        vec = make_vectors(200, prog.input.shape[1:], float(prog.input.scale[0]), int(prog.input.zero_point[0]),
                           src if src.is_dir() else None)
        host = toolchain.parse_outputs(toolchain.run_host(fw), 200, int(np.prod(prog.output.shape)))
        np.testing.assert_array_equal(host, run_tflm(tfl.read_bytes(), prog, vec), err_msg=name)

    # Two models at a time: each spends most of its time in the compilers and QEMU, one core each.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(check, name, src) for name, src in sources.items()]:
            done.result()  # re-raises a model's failure here
    for board in ("mps2-an500", "mps2-an505"):
        r = generate_firmware(keras_models["keras_cnn"], board, tmp_path / board, run=True)
        assert r["exactness"]["exact"], (board, r["exactness"])
    fw = tmp_path / "keras_cnn-mps2-an386"
    counts = {toolchain.parse_measurements(toolchain.run_qemu(fw))["instructions_per_inference"] for _ in range(2)}
    assert len(counts) == 1


def test_generated_project_compiles_for_every_board_without_warnings(keras_models, tmp_path):
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("`make test` installs the toolchain (make toolchain)")
    for board in ("mps2-an385", "mps2-an500", "mps2-an505", "generic"):
        out = tmp_path / board
        generate_firmware(keras_models["keras_residual"], board, out, vectors=4)
        subprocess.run(["make", "-s", "-C", str(out), "all"], check=True, capture_output=True)
        assert (out / "fw.elf").exists() and (out / "size.elf").exists()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host C compiler")
def test_single_product_requantization_matches_the_definition(tmp_path):
    """vs_mbqm_pos (one 64-bit multiply-accumulate and one shift, used by every kernel's
    requantization) against the two-rounding definition, under ASan/UBSan: random and edge
    accumulators, multipliers 0, 2^30, 2^31 - 1 and random, every shift from -31 to 30."""
    from pathlib import Path
    rng = np.random.default_rng(3)
    cases = []
    edges = [0, 1, -1, 2, -2, 2 ** 31 - 1, -2 ** 31, -2 ** 31 + 1, 2 ** 30, -2 ** 30]
    for shift in range(-31, 31):
        for mult in [0, 2 ** 30, 2 ** 31 - 1, *rng.integers(2 ** 30, 2 ** 31, 6)]:
            xs = edges + list(rng.integers(-2 ** 31, 2 ** 31, 12)) + list(rng.integers(-2 ** 12, 2 ** 12, 12))
            for x in xs:
                x = int(x) >> shift if shift > 0 else int(x)  # left shifts only where the value still fits
                cases.append((x, int(mult), shift))
    src = tmp_path / "mbqm.c"
    src.write_text('#include <stdio.h>\n#include "vs_fixedpoint.h"\nint main(void)\n{\n    long x, m, s;\n'
                   '    while (scanf("%ld %ld %ld", &x, &m, &s) == 3)\n'
                   '        printf("%ld\\n", (long)vs_mbqm_pos((int32_t)x, (int32_t)m, (int32_t)s));\n'
                   '    return 0;\n}\n')
    kernels = Path(__file__).resolve().parents[1] / "firmware" / "kernels"
    exe = tmp_path / "mbqm"
    subprocess.run(["gcc", "-std=c99", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    f"-I{kernels}", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], input="\n".join(f"{x} {m} {s}" for x, m, s in cases), capture_output=True,
                         text=True, check=True).stdout.split()
    assert [int(v) for v in out] == [_gemmlowp(x, m, s) for x, m, s in cases]
