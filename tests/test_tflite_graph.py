"""The .tflite reader against LiteRT's own view of the same files, and against bad files."""
import time

import numpy as np
import pytest

from firmware_zoo import KERAS_MODELS, keras_softmax
from verisparse.errors import VeriSparseError
from verisparse.tflite_graph import read_tflite


@pytest.fixture(scope="module")
def models():
    return {name: build() for name, build in KERAS_MODELS.items()}


def _litert(data):
    from ai_edge_litert.interpreter import Interpreter
    return Interpreter(model_content=data)


def test_tensors_match_litert(models):
    for name, data in models.items():
        g = read_tflite(data)
        it = _litert(data)
        details = {d["index"]: d for d in it.get_tensor_details()}
        assert g.inputs == [d["index"] for d in it.get_input_details()], name
        assert g.outputs == [d["index"] for d in it.get_output_details()], name
        for t in g.tensors:
            d = details.get(t.index)
            if d is None:  # LiteRT hides tensors its delegate-free graph does not use
                continue
            assert t.name == d["name"] and t.shape == tuple(d["shape"]) and t.dtype == d["dtype"], (name, t.name)
            qp = d["quantization_parameters"]
            np.testing.assert_array_equal(t.scale, qp["scales"].astype(np.float64))
            np.testing.assert_array_equal(t.zero_point, qp["zero_points"])
            assert t.quantized_dimension == qp["quantized_dimension"]
            if t.data is not None:
                np.testing.assert_array_equal(t.data, it.get_tensor(t.index))


def test_operators_and_options_match_schema(models):
    from tensorflow.lite.python import schema_py_generated as schema

    acts = {0: "NONE", 1: "RELU", 3: "RELU6"}
    for name, data in models.items():
        g = read_tflite(data)
        ref = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
        ops = ref.subgraphs[0].operators
        assert len(ops) == len(g.operators)
        for op, r in zip(g.operators, ops):
            code = ref.operatorCodes[r.opcodeIndex].builtinCode
            assert getattr(schema.BuiltinOperator, op.opcode) == code
            assert op.inputs == list(r.inputs) and op.outputs == list(r.outputs)
            o = r.builtinOptions
            if op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                assert (op.options["stride_h"], op.options["stride_w"]) == (o.strideH, o.strideW)
                assert (op.options["dilation_h"], op.options["dilation_w"]) == (o.dilationHFactor, o.dilationWFactor)
                assert op.options["padding"] == ("SAME", "VALID")[o.padding]
                assert op.options["fused_activation"] == acts[o.fusedActivationFunction]
            if op.opcode == "DEPTHWISE_CONV_2D":
                assert op.options["depth_multiplier"] == o.depthMultiplier
            if op.opcode.endswith("POOL_2D"):
                assert (op.options["filter_h"], op.options["filter_w"]) == (o.filterHeight, o.filterWidth)
            if op.opcode in ("FULLY_CONNECTED", "ADD"):
                assert op.options["fused_activation"] == acts[o.fusedActivationFunction]
            if op.opcode == "SOFTMAX":
                assert op.options["beta"] == o.beta
            if op.opcode == "CONCATENATION":
                assert (op.options["axis"], op.options["fused_activation"]) == (
                    o.axis, acts[o.fusedActivationFunction])
            if op.opcode == "LEAKY_RELU":
                assert op.options["alpha"] == o.alpha
            if op.opcode == "STRIDED_SLICE":
                assert [op.options[k] for k in ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask",
                                                "shrink_axis_mask", "offset")] == [
                    o.beginMask, o.endMask, o.ellipsisMask, o.newAxisMask, o.shrinkAxisMask, o.offset]
            if op.opcode == "PACK":
                assert (op.options["values_count"], op.options["axis"]) == (o.valuesCount, o.axis)
    assert {op.opcode for d in models.values() for op in read_tflite(d).operators} >= {
        "CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "ADD",
        "QUANTIZE", "DEQUANTIZE", "SOFTMAX", "CONCATENATION", "LEAKY_RELU", "STRIDED_SLICE", "PACK", "SHAPE", "MEAN"}


def test_reads_from_path(tmp_path, models):
    p = tmp_path / "m.tflite"
    p.write_bytes(models["keras_mlp"])
    assert len(read_tflite(p).operators) == 3
    with pytest.raises(VeriSparseError, match="cannot read"):
        read_tflite(tmp_path / "missing.tflite")


def test_every_truncation_and_random_corruption_raises_cleanly():
    data = keras_softmax()
    read_tflite(data)
    start = time.time()
    for n in range(len(data)):  # every prefix
        try:
            read_tflite(data[:n])
        except VeriSparseError:
            pass
    rng = np.random.default_rng(0)
    for _ in range(3000):  # random bytes overwritten, identifier kept
        bad = bytearray(data)
        for pos in rng.integers(0, len(bad), rng.integers(1, 8)):
            bad[pos] = rng.integers(0, 256)
        bad[4:8] = b"TFL3"
        try:
            read_tflite(bytes(bad))
        except VeriSparseError:
            pass
    assert time.time() - start < 60


def test_not_a_flatbuffer():
    for junk in (b"", b"TFL3", b"\x00" * 3, b"hello world, not a model", b"\xff\xff\xff\x7fTFL3" + b"\0" * 64):
        with pytest.raises(VeriSparseError):
            read_tflite(junk)
