"""Offline memory plan: every intermediate activation gets a fixed offset in one static arena.

Layers run in order, so a tensor is live from the layer that writes it to the last layer
that reads it; two tensors may share bytes when their lifetimes do not overlap. Tensors are
placed largest first at the lowest offset that fits (TFLM's greedy planner does the same).
No plan can use less than the largest total of tensors live at one time (lower_bound); on
chains like the project's models the greedy plan reaches it.

Convolution scratch buffers are planned the same way, live for their one layer.
The firmware's input and output tensors stay in the caller's buffers. RESHAPE's output
shares its input's bytes (the layout does not change) unless it is the model's output."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lower import Program

ALIGN = 4


def _aligned(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Plan:
    where: dict  # tensor index, or ("scratch", layer), -> ("input" | "output" | "arena", byte offset)
    arena_bytes: int
    lower_bound_bytes: int
    skipped: set  # indices of RESHAPE layers that need no code (output aliases input)


def plan(prog: Program) -> Plan:
    g = prog.graph
    alias, skipped = {}, set()
    for i, l in enumerate(prog.layers):
        if l.kernel == "vs_reshape" and l.output != prog.output.index:
            alias[l.output] = l.inputs[0]
            skipped.add(i)

    def root(t):
        while t in alias:
            t = alias[t]
        return t

    size, first, last = {}, {}, {}
    for i, l in enumerate(prog.layers):
        if l.scratch_bytes:  # a layer's scratch buffer lives only while the layer runs
            key = ("scratch", i)
            size[key], first[key], last[key] = _aligned(l.scratch_bytes), i, i
        for t in [*l.inputs, l.output]:
            r = root(t)
            if r in (prog.input.index, prog.output.index):
                continue
            size[r] = _aligned(int(np.prod(g.tensors[r].shape)))
            first[r] = min(first.get(r, i), i)
            last[r] = max(last.get(r, i), i)

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
    bound = max((sum(size[r] for r in size if first[r] <= i <= last[r]) for i in range(len(prog.layers))),
                default=0)

    where = {k: ("arena", offset[k]) for k in offset if isinstance(k, tuple)}
    for l in prog.layers:
        for t in [*l.inputs, l.output]:
            r = root(t)
            where[t] = ("input", 0) if r == prog.input.index else (
                ("output", 0) if r == prog.output.index else ("arena", offset[r]))
    return Plan(where, arena, bound, skipped)
