"""Firmware operators beyond the project's own models: static-shape folding and the refusals of
the new ops on graphs built in Python (seconds), and (slow) the MLPerf Tiny reference models,
SOFTMAX included, byte for byte against TFLM in QEMU and on the host under ASan/UBSan."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from verisparse.errors import VeriSparseError
from verisparse.firmware import toolchain
from verisparse.firmware.generate import generate_firmware
from verisparse.firmware.lower import lower
from verisparse.firmware.reference import run_tflm
from verisparse.firmware.vectors import make_vectors
from verisparse.tflite_graph import Graph, Operator, Tensor, read_tflite

MLPERF = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"
MLPERF_MODELS = ("kws_ref_model.tflite", "pretrainedResnet_quant.tflite", "ad01_int8.tflite")


def _act(i, shape, scale=0.1, zp=-1):
    return Tensor(i, f"t{i}", shape, np.dtype(np.int8), np.array([scale]), np.array([zp]), 0, None)


def _int32(i, shape, data=None):
    d = None if data is None else np.asarray(data, np.int32).reshape(shape)
    return Tensor(i, f"t{i}", tuple(shape), np.dtype(np.int32), np.zeros(0), np.zeros(0, np.int64), 0, d)


def _flatten_graph(batch_op=None):
    """t0 [1,2,3,4] -> SHAPE -> STRIDED_SLICE (shrink: the batch) -> PACK with 24 -> RESHAPE -> t1 [1,24],
    as Keras' Flatten converts with a dynamic batch; batch_op replaces the slice's input."""
    tensors = [_act(0, (1, 2, 3, 4)), _act(1, (1, 24)), _int32(2, (4,)), _int32(3, (1,), [0]),
               _int32(4, (1,), [1]), _int32(5, (1,), [1]), _int32(6, ()), _int32(7, (), 24), _int32(8, (2,))]
    ops = [Operator("SHAPE", [0], [2]),
           Operator("STRIDED_SLICE", [2, 3, 4, 5], [6], dict(begin_mask=0, end_mask=0, ellipsis_mask=0,
                                                              new_axis_mask=0, shrink_axis_mask=1, offset=False)),
           Operator("PACK", [6, 7], [8], dict(values_count=2, axis=0)),
           Operator("RESHAPE", [0, 8], [1], dict(new_shape=None))]
    if batch_op is not None:
        ops[1] = batch_op
    return Graph(tensors, ops, [0], [1])


def test_dynamic_batch_flatten_is_folded_at_generation_time():
    prog = lower(_flatten_graph())
    assert [l.op for l in prog.layers] == ["RESHAPE"]
    assert prog.layers[0].params["size"] == 24


def test_shape_arithmetic_gather_concat_mul_is_folded():
    """SHAPE -> GATHER [1, 2] -> MUL with itself -> CONCATENATION with [1] -> RESHAPE."""
    tensors = [_act(0, (1, 2, 3, 4)), _act(1, (1, 6, 4)), _int32(2, (4,)), _int32(3, (1,), [1]),
               _int32(4, (1,)), _int32(5, (1,), [3]), _int32(6, (1,)), _int32(7, (1,), [1]), _int32(8, (3,)),
               _int32(9, (1,), [4])]
    ops = [Operator("SHAPE", [0], [2]), Operator("GATHER", [2, 3], [4], dict(axis=0, batch_dims=0)),
           Operator("MUL", [4, 5], [6], dict(fused_activation="NONE")),
           Operator("CONCATENATION", [7, 6, 9], [8], dict(axis=0, fused_activation="NONE")),
           Operator("RESHAPE", [0, 8], [1], dict(new_shape=None))]
    g = Graph(tensors, ops, [0], [1])
    from verisparse.firmware.shapes import fold_static_shapes
    folded_graph, folded = fold_static_shapes(g)
    assert folded == {0, 1, 2, 3}
    assert folded_graph.tensors[8].data.tolist() == [1, 6, 4]
    assert [l.op for l in lower(g).layers] == ["RESHAPE"]


def test_shape_ops_on_activations_say_which_op_where_and_what_to_do():
    """A STRIDED_SLICE of an int8 activation cannot be folded: the message names the op, its index
    and output tensor, and says what to do."""
    op = Operator("STRIDED_SLICE", [0, 3, 4, 5], [6], dict(begin_mask=0, end_mask=0, ellipsis_mask=0,
                                                           new_axis_mask=0, shrink_axis_mask=1, offset=False))
    with pytest.raises(VeriSparseError) as e:
        lower(_flatten_graph(op))
    msg = str(e.value)
    assert "operator 1 is STRIDED_SLICE (output tensor 't6')" in msg and "fixed batch size of 1" in msg, msg


def _single(op_name, x, y, options=None, extra=()):
    tensors = [x, y, *extra]
    return Graph(tensors, [Operator(op_name, [0, *[t.index for t in extra]], [1], options or {})], [0], [1])


def test_softmax_params_and_refusals():
    x, y = _act(0, (1, 10), 0.1, 3), _act(1, (1, 10), 1 / 256, -128)
    p = lower(_single("SOFTMAX", x, y, dict(beta=1.0))).layers[0].params
    # beta * 0.1 * 2^26 = 6710886.4 = 0.8 * 2^23: significand round(0.8 * 2^31), shift 23
    assert (p["outer"], p["depth"], p["input_mult"], p["input_left_shift"]) == (1, 10, 1717986918, 23)
    assert p["diff_min"] == -(31 << 26 >> 23)  # TFLM's CalculateInputRadius(5, 23): -248
    with pytest.raises(VeriSparseError, match="scale 1/256 and zero point -128"):
        lower(_single("SOFTMAX", x, _act(1, (1, 10), 1 / 128, -128), dict(beta=1.0)))
    with pytest.raises(VeriSparseError, match="is not above 1"):
        lower(_single("SOFTMAX", _act(0, (1, 10), 1e-9), y, dict(beta=1.0)))


def test_concatenation_mean_and_activation_refusals():
    a, b, y = _act(0, (1, 2, 2, 3)), _act(2, (1, 2, 2, 1), 0.2), _act(1, (1, 2, 2, 4))
    g = Graph([a, y, b], [Operator("CONCATENATION", [0, 2], [1], dict(axis=-1, fused_activation="NONE"))], [0], [1])
    with pytest.raises(VeriSparseError, match="refuses inputs that need requantization"):
        lower(g)
    axes = _int32(2, (2,), [1, 3])
    with pytest.raises(VeriSparseError, match="only adjacent axes"):
        lower(_single("MEAN", a, _act(1, (1, 2)), extra=[axes]))
    with pytest.raises(VeriSparseError, match="alpha >= 0"):
        lower(_single("LEAKY_RELU", a, _act(1, (1, 2, 2, 3)), dict(alpha=-0.5)))


def test_mean_folds_the_count_into_the_multiplier_as_tflm_does():
    """TFLM: count 9 -> n = 3, multiplier (q << 3) // 9, shift - 3."""
    from verisparse.fixedpoint import quantize_multiplier
    x, y = _act(0, (1, 3, 3, 2), 0.1, 5), _act(1, (1, 2), 0.05, -7)
    p = lower(_single("MEAN", x, y, extra=[_int32(2, (2,), [1, 2])])).layers[0].params
    q, s = quantize_multiplier(0.1 / 0.05)
    assert (p["outer"], p["reduce"], p["inner"], p["sum_offset"]) == (1, 9, 2, -45)
    assert (p["mult"], p["shift"]) == ((q << 3) // 9, s - 3)


def test_squeeze_and_expand_dims_are_reshapes_that_share_bytes():
    from verisparse.firmware.plan import plan
    t = [_act(0, (1, 1, 1, 6)), _act(1, (1, 6)), _act(2, (1, 1, 6)), _int32(3, (1,), [0]), _act(4, (1, 1, 6))]
    ops = [Operator("SQUEEZE", [0], [1]), Operator("EXPAND_DIMS", [1, 3], [2]),
           Operator("LOGISTIC", [2], [4])]
    t[4] = Tensor(4, "t4", (1, 1, 6), np.dtype(np.int8), np.array([1 / 256]), np.array([-128]), 0, None)
    prog = lower(Graph(t, ops, [0], [4]))
    assert [(l.op, l.kernel) for l in prog.layers] == [("SQUEEZE", "vs_reshape"), ("EXPAND_DIMS", "vs_reshape"),
                                                       ("LOGISTIC", "vs_logistic")]
    assert plan(prog).skipped == {0, 1}  # no copies: the logistic reads the caller's input


def test_per_tensor_fully_connected_multiplier_is_the_double_product():
    """TFLM's GetQuantizedConvolutionMultipler: double(s_in) * double(s_w) / double(s_out). With the
    MLPerf autoencoder's last-layer scales the float32 product gives another significand (an exact
    rounding tie there made one output byte differ)."""
    from verisparse.fixedpoint import quantize_multiplier
    sx, sw, sy = (float(np.float32(v)) for v in (0.02479089, 0.01955668, 0.36449847))
    w = Tensor(2, "w", (3, 4), np.dtype(np.int8), np.array([sw]), np.array([0]), 0,
               np.arange(12, dtype=np.int8).reshape(3, 4))
    g = Graph([_act(0, (1, 4), sx), _act(1, (1, 3), sy), w],
              [Operator("FULLY_CONNECTED", [0, 2], [1], dict(fused_activation="NONE", weights_format="DEFAULT",
                                                             keep_num_dims=False))], [0], [1])
    layer = lower(g).layers[0]
    want = quantize_multiplier(sx * sw / sy)
    assert want != quantize_multiplier(float(np.float32(sx) * np.float32(sw)) / sy)
    assert (int(layer.arrays["mult"][0]), int(layer.arrays["shift"][0])) == want


needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                               reason="`make test` installs the toolchain (make toolchain)")


@needs_arm
@pytest.mark.slow
@pytest.mark.skipif(not MLPERF.is_dir(), reason=f"the MLPerf Tiny models are not in {MLPERF}")
def test_mlperf_tiny_models_are_bit_exact_in_qemu_and_under_sanitizers(tmp_path):
    """The MLPerf Tiny reference models, unmodified (KWS DS-CNN and ResNet-8 end in SOFTMAX; the
    autoencoder's per-tensor FULLY_CONNECTED multipliers are double products, as TFLM's): 200
    vectors on Cortex-M4 in QEMU and on the host under ASan/UBSan, every byte equal to TFLM's."""
    for name in MLPERF_MODELS:
        src = MLPERF / name
        fw = tmp_path / src.stem
        r = generate_firmware(src, "mps2-an386", fw, run=True, vectors=200)
        e = r["exactness"]
        assert e["exact"] and e["vectors"] == 200 and e["tflm"]["identical_vectors"] == 200, (name, e)
        prog = lower(read_tflite(src))
        vec = make_vectors(200, prog.input.shape[1:], float(prog.input.scale[0]), int(prog.input.zero_point[0]))
        host = toolchain.parse_outputs(toolchain.run_host(fw), 200, int(np.prod(prog.output.shape)))
        np.testing.assert_array_equal(host, run_tflm(src.read_bytes(), prog, vec), err_msg=name)
        assert prog.layers[-1].op == ("FULLY_CONNECTED" if name == "ad01_int8.tflite" else "SOFTMAX")


@needs_arm
@pytest.mark.slow
def test_keras_models_with_the_new_ops_are_bit_exact_in_qemu(tmp_path):
    """SOFTMAX, MEAN, CONCATENATION, RELU, RELU6, LEAKY_RELU, QUANTIZE, MUL, SUB, MAXIMUM, MINIMUM,
    LOGISTIC, TANH, HARD_SWISH and a dynamic-batch Flatten, on Cortex-M3 and M4: 200 vectors each,
    every byte equal to TFLM's."""
    from firmware_zoo import keras_dynamic_batch, keras_elementwise, keras_heads
    ops = set()
    for build in (keras_heads, keras_dynamic_batch, keras_elementwise):
        src = tmp_path / f"{build.__name__}.tflite"
        src.write_bytes(build())
        ops |= {l.op for l in lower(read_tflite(src)).layers}
        for board in ("mps2-an385", "mps2-an386"):
            r = generate_firmware(src, board, tmp_path / f"{src.stem}-{board}", run=True, vectors=200)
            e = r["exactness"]
            assert e["exact"] and e["tflm"]["identical_vectors"] == 200, (src.stem, board, e)
    assert ops >= {"SOFTMAX", "MEAN", "CONCATENATION", "RELU", "RELU6", "LEAKY_RELU", "QUANTIZE", "MUL", "SUB",
                   "MAXIMUM", "MINIMUM", "LOGISTIC", "TANH", "HARD_SWISH"}


@needs_arm
@pytest.mark.slow
def test_dsp_kernels_match_plain_c_and_tflm_at_their_edges(tmp_path):
    """Channel counts and patch sizes that are not multiples of four, stride, dilation and padding
    on every border: the DSP kernels (Cortex-M4, M33) and the plain C ones (Cortex-M3, and the host
    under ASan/UBSan) give TFLM's bytes on 200 vectors, and only the DSP builds contain SMLAD."""
    from firmware_zoo import keras_dsp_edges
    src = tmp_path / "dsp_edges.tflite"
    src.write_bytes(keras_dsp_edges())
    prog = lower(read_tflite(src))
    kernels = [l.kernel for l in prog.layers]
    assert kernels.count("vs_depthwise_conv2d") == 2 and "vs_average_pool2d" in kernels
    for board, dsp in (("mps2-an385", False), ("mps2-an386", True), ("mps2-an505", True)):
        fw = tmp_path / board
        r = generate_firmware(src, board, fw, run=True, vectors=200)
        e = r["exactness"]
        assert e["exact"] and e["tflm"]["identical_vectors"] == 200, (board, e)
        disasm = subprocess.run(["arm-none-eabi-objdump", "-d", str(fw / "build/kernels/vs_conv.o")],
                                capture_output=True, text=True, check=True).stdout
        assert ("smlad" in disasm) == dsp, board
    vec = make_vectors(200, prog.input.shape[1:], float(prog.input.scale[0]), int(prog.input.zero_point[0]))
    host = toolchain.parse_outputs(toolchain.run_host(tmp_path / "mps2-an386"), 200, int(np.prod(prog.output.shape)))
    np.testing.assert_array_equal(host, run_tflm(src.read_bytes(), prog, vec))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host C compiler")
def test_planned_scratch_equals_the_kernels_buffer_size_functions(tmp_path):
    """The arena plan reserves what each kernel's *_buffer_size function says it needs: dense and
    sparse convolutions (two patches, one patch, none for pointwise or 1x1) and depthwise layers
    with and without border windows."""
    from firmware_zoo import keras_cnn, keras_dsp_edges
    sizes = {"vs_conv2d": "vs_conv2d_buffer_size", "vs_conv2d_sparse": "vs_conv2d_sparse_buffer_size",
             "vs_depthwise_conv2d": "vs_depthwise_conv2d_buffer_size"}
    seen = set()
    for build in (keras_dsp_edges, keras_cnn):
        src = tmp_path / f"{build.__name__}.tflite"
        src.write_bytes(build())
        fw = tmp_path / build.__name__
        generate_firmware(src, "mps2-an386", fw, vectors=1)
        layers = [(k, l) for k, l in enumerate(lower(read_tflite(src)).layers) if l.kernel in sizes]
        seen |= {(l.kernel, l.scratch_bytes > 0) for _, l in layers}
        main = "".join(f'    printf("%u\\n", (unsigned){sizes[l.kernel]}(&l{k}_params));\n' for k, l in layers)
        (fw / "sizes.c").write_text(f'#include <stdio.h>\n#include "model.c"\nint main(void)\n{{\n{main}'
                                    '    return 0;\n}\n')
        exe = fw / "sizes"
        subprocess.run(["gcc", "-std=c99", f"-I{fw}", f"-I{fw / 'kernels'}", str(fw / "sizes.c"),
                        *map(str, sorted((fw / "kernels").glob("*.c"))), "-o", str(exe)], check=True)
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
        assert [int(v) for v in out] == [l.scratch_bytes for _, l in layers], build.__name__
    assert {("vs_conv2d", True), ("vs_conv2d", False), ("vs_depthwise_conv2d", True)} <= seen, seen
