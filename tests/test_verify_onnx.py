"""ONNX import: the same network gives the same bounds from the trainer's model and from its
ONNX graph, for every supported op; hostile or unsupported files give one clear error."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from netgen import random_net
from verisparse.errors import VeriSparseError
from verisparse.trainer.layers import Normalize
from verisparse.verify.bounds import input_box, margin_spec
from verisparse.verify.from_torch import bounded_net
from verisparse.verify.onnx_import import import_onnx, load_onnx_proto


def _w(m):
    return (m.effective_weight() if hasattr(m, "effective_weight") else m.weight).detach().numpy()


def _b(m):
    return (m.effective_bias() if hasattr(m, "effective_bias") else m.bias).detach().numpy()


def to_onnx_all_ops(model, shape, variant):
    """The netgen model as an ONNX graph that uses every supported op (variant picks between
    Gemm and MatMul+Add, Flatten and Reshape, Mul and Div)."""
    nodes, inits = [], []

    def const(a, dtype=np.float32):
        name = f"c{len(inits)}"
        inits.append(numpy_helper.from_array(np.asarray(a, dtype=dtype), name))
        return name

    def node(op, inputs, **attrs):
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], name=f"n{len(nodes)}_{op}", **attrs))
        return out

    cur = "x"
    for m in model:
        if isinstance(m, Normalize):
            c = len(m.mean)
            cur = node("Sub", [cur, const(m.mean.numpy().reshape(c, 1, 1))])
            cur = (node("Div", [cur, const(m.std.numpy().reshape(1, c, 1, 1))]) if variant % 2 else
                   node("Mul", [cur, const((1 / m.std).numpy().reshape(c, 1, 1))]))
        elif isinstance(m, nn.Conv2d):
            cur = node("Conv", [cur, const(_w(m)), const(_b(m))], kernel_shape=list(m.kernel_size),
                       strides=list(m.stride), pads=[m.padding[0], m.padding[1]] * 2)
        elif isinstance(m, nn.BatchNorm2d):
            cur = node("BatchNormalization", [cur, const(m.weight.detach()), const(m.bias.detach()),
                                              const(m.running_mean), const(m.running_var)], epsilon=m.eps)
        elif isinstance(m, nn.ReLU):
            cur = node("Relu", [cur])
        elif isinstance(m, nn.AvgPool2d):
            cur = node("AveragePool", [cur], kernel_shape=[m.kernel_size] * 2, strides=[m.stride] * 2)
        elif isinstance(m, nn.Flatten):
            cur = node("Flatten", [cur], axis=1) if variant % 2 else node("Reshape", [cur, const([0, -1], np.int64)])
        elif isinstance(m, nn.Linear):
            if variant % 2:
                cur = node("Gemm", [cur, const(_w(m)), const(_b(m))], transB=1)
            else:
                cur = node("Add", [node("MatMul", [cur, const(_w(m).T)]), const(_b(m))])
    nodes[-1].output[0] = "logits"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


@pytest.mark.parametrize("seed", range(40))
def test_onnx_import_gives_the_trainer_bounds(seed):
    gen = torch.Generator().manual_seed(seed)
    model, shape = random_net(["mlp", "cnn", "linear"][seed % 3], gen)
    proto = to_onnx_all_ops(model, shape, seed // 3)
    imp = import_onnx(proto.SerializeToString())
    ref = bounded_net(model, shape)
    x = torch.rand(6, *shape, generator=gen)
    y = torch.randint(0, 4, (6,), generator=gen)
    x_l, x_u = input_box(x, 0.05)
    C = margin_spec(y, 4)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.allclose(imp.net.forward(x).numpy(), sess.run(None, {"x": x.numpy()})[0], atol=1e-5)
        assert torch.allclose(imp.net.forward(x), model(x), atol=1e-5)
        for a, b in zip(imp.net.ibp(x_l, x_u, C), ref.ibp(x_l, x_u, C)):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-5)
        a = imp.net.crown(x_l, x_u, C, upper=True)
        b = ref.crown(x_l, x_u, C, upper=True)
        for p, q in zip(a, b):
            assert torch.allclose(p, q, atol=1e-4, rtol=1e-5)
    assert imp.in_shape == tuple(shape) and imp.num_classes == 4


def _graph(nodes, inits, in_shape=(3,), out_shape=(2,), inputs=None):
    g = helper.make_graph(nodes, "g", inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_shape])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return m.SerializeToString()


def _gemm_init(W=None):
    return numpy_helper.from_array(np.ones((2, 3), np.float32) if W is None else W, "W")


@pytest.mark.parametrize("case,needle", [
    ("garbage", "not a readable ONNX model"),
    ("truncated", "not a readable ONNX model"),
    ("empty", "holds no ONNX graph"),
    ("unsupported", "n_sig"),
    ("branch", "not a chain"),
    ("nan", "NaN"),
    ("shape", "does not fit"),
    ("external", "external data"),
    ("huge", "too large"),
    ("two_inputs", "exactly one non-constant input"),
    ("div_by_input", "not linear"),
])
def test_hostile_or_unsupported_onnx_gives_one_clear_error(case, needle, tmp_path):
    gemm = helper.make_node("Gemm", ["x", "W"], ["y"], name="n_gemm", transB=1)
    if case == "garbage":
        data = b"\x08\x07garbage" * 50
    elif case == "truncated":
        data = _graph([gemm], [_gemm_init()])[:-7]
    elif case == "empty":
        data = helper.make_model(helper.make_graph([], "g", [], [])).SerializeToString()
    elif case == "unsupported":
        data = _graph([helper.make_node("Sigmoid", ["x"], ["s"], name="n_sig"),
                       helper.make_node("Gemm", ["s", "W"], ["y"], transB=1)], [_gemm_init()])
    elif case == "branch":
        data = _graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["x", "r"], ["a"]),
                       helper.make_node("Gemm", ["a", "W"], ["y"], transB=1)], [_gemm_init()])
    elif case == "nan":
        data = _graph([gemm], [_gemm_init(np.full((2, 3), np.nan, np.float32))])
    elif case == "shape":
        data = _graph([gemm], [_gemm_init(np.ones((2, 5), np.float32))])
    elif case == "external":
        t = _gemm_init()
        t.data_location = TensorProto.EXTERNAL
        t.ClearField("raw_data")
        t.external_data.add(key="location", value="/etc/passwd")
        data = _graph([gemm], [t])
    elif case == "huge":
        data = _graph([gemm], [_gemm_init(np.ones((2, 3), np.float32))], in_shape=(100000, 100000, 3))
    elif case == "two_inputs":
        data = _graph([gemm], [_gemm_init()], inputs=[
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])])
    elif case == "div_by_input":
        data = _graph([helper.make_node("Div", ["c", "x"], ["d"], name="n_div"),
                       helper.make_node("Gemm", ["d", "W"], ["y"], transB=1)],
                      [_gemm_init(), numpy_helper.from_array(np.ones(3, np.float32), "c")])
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    with pytest.raises(VeriSparseError, match=needle):
        import_onnx(load_onnx_proto(path))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(VeriSparseError, match="cannot read"):
        load_onnx_proto(tmp_path / "nope.onnx")
