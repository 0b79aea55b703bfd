"""Falsifying the int8 model on its own integer box, not on a float surrogate's.

A float PGD on the rounding-free surrogate climbs a function the microcontroller does not
compute, and its point is then rounded: on the default run it missed 30 of the 47 int8
samples the bounds left open. This search works on the integers: every candidate is an int8
input inside the box the eps-ball quantizes to, scored by the integer network (byte-exact
with LiteRT's reference kernels and TFLM), and only the best ones go to LiteRT, whose verdict
alone makes a sample falsified. Moves, cheapest first:
  corners      every pixel at the box end its surrogate gradient points to;
  snapped PGD  signed gradient steps of whole int8 steps, clamped to the box;
  greedy       flips of single pixels to the other end of their range, the most promising
               (|gradient| times distance) tried together as one batch per round.
"""
from __future__ import annotations

import torch

from .int8_bounds import Requant


def _surrogate_u(model):
    """The integer network with rounding removed (requant = clamp(acc * m)), on u = q - zp."""
    def forward(u):
        for op in model.net.ops:
            if isinstance(op, Requant):
                u = torch.clamp(u * op.m.to(u), op.lo, op.hi)
            else:
                u = op.smooth(u) if hasattr(op, "smooth") else op.forward(u)
        return u
    return forward


def _margin(out, y):
    """q_y - max_{j != y} q_j, minus a half where a tie with a lower class index would win
    LiteRT's argmax (first maximum): negative means misclassified."""
    own = out.gather(1, y[:, None]).squeeze(1)
    other = out.scatter(1, y[:, None], float("-inf"))
    best = other.max(1).values
    idx = torch.arange(out.shape[1], device=out.device)
    tie_below = ((other == own[:, None]) & (idx[None] < y[:, None])).any(1)
    return own - best - 0.5 * tie_below.to(out.dtype)


def _grad(surrogate, u, y):
    u = u.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = surrogate(u)
        own = out.gather(1, y[:, None]).squeeze(1)
        other = out.scatter(1, y[:, None], float("-inf")).max(1).values
        g, = torch.autograd.grad((own - other).sum(), u)
    return g


def integer_search(model, u0, lo, hi, y, steps=30, greedy_rounds=40, flips=48, generator=None):
    """Search the integer box [lo, hi] (u = q - zp, float64 NCHW) around u0 for inputs the
    integer network misclassifies. Returns (best u per sample, its integer margin)."""
    forward = model.net.forward
    surrogate = _surrogate_u(model)
    with torch.no_grad():
        best = torch.minimum(torch.maximum(u0, lo), hi)
        best_m = _margin(forward(best), y)

    def consider(cand):
        nonlocal best, best_m
        with torch.no_grad():
            m = _margin(forward(cand), y)
        better = m < best_m
        best = torch.where(better.view(-1, *[1] * (u0.dim() - 1)), cand, best)
        best_m = torch.minimum(m, best_m)

    g = _grad(surrogate, best, y)
    consider(torch.where(g > 0, lo, hi))
    width = (hi - lo).amax(dim=tuple(range(1, u0.dim())), keepdim=True).clamp(min=1)
    for start in (best.clone(), lo + (hi - lo) * torch.rand(u0.shape, generator=generator, dtype=u0.dtype).round()):
        u = start
        for k in range(steps):
            step = torch.clamp((width * (1 - k / steps) / 4).round(), min=1)
            u = torch.minimum(torch.maximum(u - step * _grad(surrogate, u, y).sign(), lo), hi)
            consider(u)
    for _ in range(greedy_rounds):
        live = (best_m >= 0).nonzero().squeeze(1)
        if not len(live):
            break
        cur, g = best[live], _grad(surrogate, best[live], y[live])
        target = torch.where(g > 0, lo[live], hi[live])
        gain = (g * (cur - target)).flatten(1)  # first-order margin drop of each single flip
        k = min(flips, gain.shape[1])
        top = gain.topk(k, dim=1).indices
        cand = cur.flatten(1).unsqueeze(1).repeat(1, k, 1)
        rows = torch.arange(len(live))[:, None].expand(-1, k)
        cand[rows, torch.arange(k)[None].expand(len(live), -1), top] = target.flatten(1).gather(1, top)
        with torch.no_grad():
            m = _margin(forward(cand.view(-1, *u0.shape[1:])), y[live].repeat_interleave(k)).view(len(live), k)
        m_best, pick = m.min(1)
        improved = m_best < best_m[live]
        if not improved.any():
            break
        chosen = cand[torch.arange(len(live)), pick].view(-1, *u0.shape[1:])
        upd = live[improved]
        best[upd], best_m[upd] = chosen[improved], m_best[improved]
    return best, best_m
