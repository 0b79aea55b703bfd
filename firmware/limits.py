"""Resource limits, checked on the parsed graph before any lowering, encoding or writing, so a
hostile or mistaken file cannot make the generator run for hours or fill the disk.

Defaults are far above what microcontroller models need (MLPerf Tiny's models have at most 16
ops, 12.5 M MACs (the CIFAR-10 ResNet) and 81,920 elements in a tensor (the anomaly
detector's first weights)); `verisparse firmware` takes
--max-ops, --max-tensor-elements, --max-macs and --max-arena to raise or lower them. The
board's flash and RAM are checked separately, after planning."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from verisparse.errors import VeriSparseError

if TYPE_CHECKING:  # the command imports this module for its defaults; numpy stays unloaded until a run
    from verisparse.tflite_graph import Graph


# The kernels' int index arithmetic and the average pool's int32 sum (128 per element) stay in
# range up to here, so --max-tensor-elements cannot go higher.
TENSOR_ELEMENTS_CEILING = 1 << 23


@dataclass(frozen=True)
class Limits:
    max_ops: int = 1000
    max_tensor_elements: int = TENSOR_ELEMENTS_CEILING
    max_macs: int = 1_000_000_000
    max_arena: int = 64 << 20  # bytes of planned activation arena

    def __post_init__(self):
        for name, v in vars(self).items():
            if v < 1:
                raise VeriSparseError(f"--{name.replace('_', '-')} must be at least 1; got {v}")
        if self.max_tensor_elements > TENSOR_ELEMENTS_CEILING:
            raise VeriSparseError(f"--max-tensor-elements can be at most {TENSOR_ELEMENTS_CEILING} (the kernels' "
                                  f"index arithmetic); got {self.max_tensor_elements}")


def _macs(g: Graph, op) -> int:
    """Dense multiply-accumulates of a weighted op, from the stored shapes (0 for the rest)."""
    if op.opcode not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(op.inputs) < 2 \
            or op.inputs[1] < 0 or not op.outputs:
        return 0
    w, y = g.tensors[op.inputs[1]].shape, g.tensors[op.outputs[0]].shape
    per_output = {"CONV_2D": w[1:], "DEPTHWISE_CONV_2D": w[1:3], "FULLY_CONNECTED": w[1:]}[op.opcode]
    return math.prod(y) * math.prod(per_output)


def check_graph(g: Graph, limits: Limits):
    if len(g.operators) > limits.max_ops:
        raise VeriSparseError(f"the model has {len(g.operators)} operators, more than --max-ops "
                              f"{limits.max_ops}; raise --max-ops if the model is meant to be this large")
    for t in g.tensors:
        n = math.prod(t.shape)
        if n > limits.max_tensor_elements:
            raise VeriSparseError(f"tensor {t.index} ({t.name!r}) has {n} elements {list(t.shape)}, more than "
                                  f"--max-tensor-elements {limits.max_tensor_elements}; raise it (up to "
                                  f"{TENSOR_ELEMENTS_CEILING}) if the model is meant to be this large")
    macs = sum(_macs(g, op) for op in g.operators)
    if macs > limits.max_macs:
        raise VeriSparseError(f"the model needs {macs} multiply-accumulates per inference, more than --max-macs "
                              f"{limits.max_macs}; raise --max-macs if the model is meant to be this large")


def check_arena(arena_bytes: int, limits: Limits):
    if arena_bytes > limits.max_arena:
        raise VeriSparseError(f"the model needs {arena_bytes} bytes of activation arena, more than --max-arena "
                              f"{limits.max_arena}; raise --max-arena if the model is meant to be this large")
