"""Write a folded model as an ONNX graph (opset 17, dynamic batch) and check it.

The graph is assembled node by node from the folded weights: the op set is small
(Sub/Div for input normalisation, Conv, Gemm, Relu, Flatten), and writing it directly keeps
the file independent of torch's exporter versions."""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from verisparse.errors import VeriSparseError
from verisparse.trainer.layers import Normalize

OPSET = 17


def to_onnx(model: nn.Sequential, in_shape, metadata: dict) -> onnx.ModelProto:
    nodes, inits, cur = [], [], "input"

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def node(op, inputs, **attrs):
        out = f"{op.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    for i, m in enumerate(model):
        if isinstance(m, Normalize):
            shape = (-1,) + (1,) * (len(in_shape) - 1)
            cur = node("Sub", [cur, const(f"mean_{i}", m.mean.numpy().reshape(shape))])
            cur = node("Div", [cur, const(f"std_{i}", m.std.numpy().reshape(shape))])
        elif isinstance(m, nn.Conv2d):
            (ph, pw) = m.padding
            cur = node("Conv", [cur, const(f"w_{i}", m.weight.detach().numpy()), const(f"b_{i}", m.bias.detach().numpy())],
                       kernel_shape=list(m.kernel_size), strides=list(m.stride), pads=[ph, pw, ph, pw])
        elif isinstance(m, nn.Linear):
            cur = node("Gemm", [cur, const(f"w_{i}", m.weight.detach().numpy()), const(f"b_{i}", m.bias.detach().numpy())],
                       transB=1)
        elif isinstance(m, nn.ReLU):
            cur = node("Relu", [cur])
        elif isinstance(m, nn.Flatten):
            cur = node("Flatten", [cur], axis=1)
        else:
            raise VeriSparseError(f"cannot write layer {type(m).__name__} to ONNX")
    nodes[-1].output[0] = "logits"
    n_out = [m for m in model if isinstance(m, nn.Linear)][-1].out_features
    graph = helper.make_graph(
        nodes, "verisparse",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *in_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_out])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="verisparse")
    proto.ir_version = 8  # readable by every ONNX Runtime that knows opset 17
    for k, v in metadata.items():
        proto.metadata_props.add(key=k, value=str(v))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def onnx_max_error(data: bytes, model: nn.Sequential, x: torch.Tensor, batch=500):
    """Largest |ONNX Runtime - torch| over x, run through a fresh session on the serialized model."""
    import onnxruntime as ort
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for s in range(0, len(x), batch):
            xb = x[s:s + batch]
            ref = model(xb).numpy()
            got = sess.run(["logits"], {"input": xb.numpy()})[0]
            worst = max(worst, float(np.abs(got - ref).max()))
    return worst
