"""Offline memory plan: every activation, the model's input and output included, gets a fixed
offset in one static arena.

Layers run in order, so a tensor is live from the layer that writes it to the last layer
that reads it; the input is live from before the first layer (the caller writes it) and the
output until after the last (the caller reads it). Two tensors may share bytes when their
lifetimes do not overlap. Tensors are placed largest first at the lowest offset that fits
(TFLM's greedy planner does the same). No plan can use less than the largest total of tensors
live at one time (lower_bound); on chains like the project's models the greedy plan reaches it.

Convolution scratch buffers are planned the same way, live for their one layer.
Two kinds of layer write into their input's bytes instead of new ones:
- RESHAPE (and SQUEEZE, EXPAND_DIMS): the layout does not change, so no code runs;
- element-wise kernels (IN_PLACE) whose output has an input's size, when that input is read
  by no later layer: they read element i before writing it (vs_kernels.h), so the output may
  overwrite the input. The caller's input bytes may therefore be overwritten by a run."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lower import Program

ALIGN = 4
# kernels that may write over an input of the output's size (the contract in vs_kernels.h)
IN_PLACE = frozenset({"vs_add", "vs_sub", "vs_mul", "vs_maximum", "vs_minimum", "vs_rescale", "vs_logistic",
                      "vs_tanh", "vs_hard_swish", "vs_softmax"})


def _aligned(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Plan:
    where: dict  # tensor index, or ("scratch", layer), -> ("arena", byte offset)
    arena_bytes: int
    lower_bound_bytes: int
    skipped: set  # indices of RESHAPE layers that need no code (output aliases input)
    in_place: set  # indices of element-wise layers whose output overwrites an input


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

    placed = []  # (offset, size, first, last)
    offset = {}
    for r in sorted(size, key=lambda r: (-size[r], first[r])):
        busy = sorted((o, s) for o, s, f, la in placed if f <= last[r] and first[r] <= la)
        at = 0
        for o, s in busy:
            if at + size[r] <= o:
                break
            at = max(at, o + s)
        offset[r] = at
        placed.append((at, size[r], first[r], last[r]))
    arena = max((o + s for o, s, _, _ in placed), default=0)
    bound = max((sum(size[r] for r in size if first[r] <= i <= last[r]) for i in range(-1, len(layers) + 1)),
                default=0)
    where = {k: ("arena", offset[k]) for k in offset if isinstance(k, tuple)}
    for t in elements:
        where[t] = ("arena", offset[root(t)])
    return Plan(where, arena, bound, skipped, in_place)
