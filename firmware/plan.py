"""Offline memory plan: every activation, the model's input and output included, gets a fixed
offset in one static arena.

Layers run in order, so a tensor is live from the layer that writes it to the last layer
that reads it; the input is live from before the first layer (the caller writes it) and the
output until after the last (the caller reads it). Two tensors may share bytes when their
lifetimes do not overlap. Tensors are placed largest first at the lowest offset that fits
(TFLM's greedy planner does the same). No plan can use less than the largest total of tensors
live at one time (lower_bound); on chains like the project's models the greedy plan reaches it.

Convolution scratch buffers are planned the same way, live for their one layer.
Three kinds of layer write into their input's bytes:
- RESHAPE (and SQUEEZE, EXPAND_DIMS): the layout does not change, so no code runs;
- element-wise kernels (IN_PLACE) whose output has an input's size, when that input is read
  by no later layer: they read element i before writing it (vs_kernels.h), so the output may
  overwrite the input;
- windowed kernels (SLIDING: convolutions, pools) whose input is read by no later layer: they
  write output pixels in raster order and, once pixel p is written, read only input rows from
  p's first window row on (vs_kernels.h). So the output may start `lead` bytes before the input
  and run over it: each output byte lands on input rows no later read needs. lead is the most
  output written ahead of the first input row still needed, over all output rows (and, for a
  dense pointwise convolution, over its passes of two pixels).
The caller's input bytes may therefore be overwritten by a run."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lower import Program

ALIGN = 4
# kernels that may write over an input of the output's size (the contract in vs_kernels.h)
IN_PLACE = frozenset({"vs_add", "vs_sub", "vs_mul", "vs_maximum", "vs_minimum", "vs_rescale", "vs_logistic",
                      "vs_tanh", "vs_hard_swish", "vs_softmax"})
# kernels whose output may run over their input from `lead` bytes before it (the contract in vs_kernels.h)
SLIDING = frozenset({"vs_conv2d", "vs_conv2d_sparse", "vs_depthwise_conv2d", "vs_max_pool2d", "vs_average_pool2d"})


def _pointwise(p: dict) -> bool:
    """A 1x1 convolution of stride 1 without padding: vs_conv2d reads its pixels where they lie."""
    return (p["k_h"], p["k_w"], p["stride_h"], p["stride_w"], p["pad_top"], p["pad_left"]) == (1, 1, 1, 1, 0, 0) \
        and (p["in_h"], p["in_w"]) == (p["out_h"], p["out_w"])


def _lead(kernel: str, p: dict) -> int:
    """Bytes the output must start before the input: after output row r is written, reads start at
    input row r * stride - pad_top (or 0), so (r + 1) output rows may not reach past that row's start.
    A dense pointwise convolution with the DSP extension runs two pixels per pass (the last row's
    last pixel with the next row's first), reading both while it writes both (vs_conv.c): a pass's
    outputs may not reach past its first input pixel either."""
    in_c, out_c = p.get("in_c", p.get("c")), p.get("out_c", p.get("c"))
    in_row, out_row = p["in_w"] * in_c, p["out_w"] * out_c
    lead = max((r + 1) * out_row - max(r * p["stride_h"] - p["pad_top"], 0) * in_row for r in range(p["out_h"]))
    if kernel == "vs_conv2d" and _pointwise(p):
        pixels = p["out_h"] * p["out_w"]
        lead = max(lead, max(min(q + 2, pixels) * out_c - q * in_c for q in range(0, pixels, 2)))
    return lead


def _aligned(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Plan:
    where: dict  # tensor index, or ("scratch", layer), -> ("arena", byte offset)
    arena_bytes: int
    lower_bound_bytes: int
    skipped: set  # indices of RESHAPE layers that need no code (output aliases input)
    in_place: set  # indices of element-wise layers whose output overwrites an input
    sliding: set  # indices of windowed layers whose output runs over their input


def plan(prog: Program) -> Plan:
    g, layers = prog.graph, prog.layers
    elements = {t: int(np.prod(g.tensors[t].shape)) for l in layers for t in [*l.inputs, l.output]}
    alias, skipped, in_place = {}, set(), set()

    def root(t):
        while t in alias:
            t = alias[t]
        return t

    for i, l in enumerate(layers):
        if l.kernel == "vs_reshape":
            alias[l.output] = l.inputs[0]
            skipped.add(i)
    last_read = {}
    for i, l in enumerate(layers):
        for t in l.inputs:
            last_read[root(t)] = i
    for i, l in enumerate(layers):  # in order: an earlier merge extends the group a later layer reads
        if l.kernel not in IN_PLACE:
            continue
        dead = [t for t in l.inputs if last_read.get(root(t)) == i and elements[t] == elements[l.output]
                and root(t) != root(prog.output.index)]
        if dead:
            r, o = root(dead[0]), root(l.output)
            alias[o] = r
            last_read[r] = max(i, last_read.get(o, i))
            in_place.add(i)

    lead = {}  # (output root, input root) -> bytes the output starts before the input, at least
    for i, l in enumerate(layers):
        if l.kernel in SLIDING and last_read.get(root(l.inputs[0])) == i and root(l.output) == l.output \
                and root(l.inputs[0]) != root(prog.output.index):
            lead[(l.output, root(l.inputs[0]))] = _aligned(_lead(l.kernel, l.params))  # tensors stay word-aligned

    size, first, last = {}, {}, {}
    for i, l in enumerate(layers):
        if l.scratch_bytes:  # a layer's scratch buffer lives only while the layer runs
            key = ("scratch", i)
            size[key], first[key], last[key] = _aligned(l.scratch_bytes), i, i
        for t in [*l.inputs, l.output]:
            r = root(t)
            size[r] = max(size.get(r, 0), _aligned(elements[t]))
            first[r] = min(first.get(r, i), i)
            last[r] = max(last.get(r, i), i)
    # the caller writes the input before the first layer and reads the output after the last
    first[root(prog.input.index)] = -1
    last[root(prog.output.index)] = len(layers)

    # An output must start below its input to share its bytes: placing upwards, the output must be
    # placed first; placing downwards from the arena's end (m = arena - offset - size), the input.
    def blocked(r, q, at, down, lead):
        """The places r may not take because q sits at `at`, as (o, s): r fits below o or from o + s
        on; two unrelated tensors give (at, size of q)."""
        if (r, q) in lead:  # r, the output, starts at least lead bytes below its input q, or past q's end
            d = lead[(r, q)]
            return (at, size[q] + d - size[r]) if down else (at - d + size[r], size[q] + d - size[r])
        if (q, r) in lead:  # q, the output, starts at least lead bytes below its input r, or past r's end
            d = lead[(q, r)]
            return (at + size[q] - d, d) if down else (at, d)
        return at, size[q]

    def place(down, lead):
        offset = {}
        for r in sorted(size, key=lambda r: (-size[r], first[r])):
            busy = sorted(blocked(r, q, o, down, lead) for q, o in offset.items() if first[q] <= last[r]
                          and first[r] <= last[q])
            at = 0
            for o, s in busy:
                if at + size[r] <= o:
                    break
                at = max(at, o + s)
            offset[r] = at
        arena = max((o + size[r] for r, o in offset.items()), default=0)
        return arena, {r: arena - m - size[r] for r, m in offset.items()} if down else offset

    def bound(lead):
        def overlap(i):  # bytes an output may share with its input at layer i, at most
            return sum(max(size[o] + size[q] - (max(size[q], size[o] - d) - min(0, -d)), 0)
                       for (o, q), d in lead.items() if first[o] == i)
        return max((sum(size[r] for r in size if first[r] <= i <= last[r]) - overlap(i)
                    for i in range(-1, len(layers) + 1)), default=0)

    # the smallest of four plans: windowed outputs separate or running over their inputs, placed
    # upwards or downwards; on a tie the plan that asks less of the kernels
    plans = [(*place(down, rule), n, rule) for n, rule in enumerate(({}, lead)) for down in (False, True)]
    arena, offset, _, lead = min(plans, key=lambda p: (p[0], p[2]))
    # the bound of the sharing the plan uses: pairs placed apart share nothing
    lead = {(o, q): d for (o, q), d in lead.items()
            if offset[o] < offset[q] + size[q] and offset[q] < offset[o] + size[o]}
    bound = bound(lead)
    where = {k: ("arena", offset[k]) for k in offset if isinstance(k, tuple)}
    for t in elements:
        where[t] = ("arena", offset[root(t)])
    sliding = {i for i, l in enumerate(layers) if (l.output, root(l.inputs[0])) in lead}
    return Plan(where, arena, bound, skipped, in_place, sliding)
