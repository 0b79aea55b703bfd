"""Branch and bound for the int8 model: the margins the integer bounds leave open, by cases.

A requantization's relaxation is loose only where a clamp's corner lies inside its
accumulator's range. The accumulator is an integer, so splitting its range [l, u] at an
integer t into [l, t] and [t + 1, u] covers every value the firmware can compute, whatever t
is; t is chosen where the requantized output stops being the clamp's bound (largest t with
f(t) at the bottom corner, or smallest with f(t) at the top), which makes the neuron exact
(a constant) on one side and unclamped there on the other. Each subdomain is bounded by
CROWN over the integer network with its split accumulators clipped (BoundedNet's clips; the
box's own CROWN intermediate bounds, rounded outward to integers, hold in every subdomain);
a subdomain whose interval bounds contradict its splits has no input and is dropped. The
margin row is proved when every leaf is proved or empty. Bounds concretise over the whole
integer box, so a leaf's bound holds for the inputs inside it: sound without splitting
constraints in the bound (beta), only looser.

Each open leaf's concretising point (an int8 input) is run through the integer network, and
where that misclassifies, through LiteRT (the caller's check): only LiteRT's verdict makes a
counterexample. Branching: the neuron whose relaxation gap (upper line minus lower line over
its range) weighs most in the bound's linear function (|A| times the gap; BaBSR's idea).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .bab import _clips  # the same per-subdomain cut of the root bounds, on accumulators here
from .bounds import _through_lines, concretize
from .int8_bounds import _TOL, Requant

BATCH = 32           # subdomains bounded per call
MAX_DOMAINS = 4_000  # per margin row: past it the row stays open
PROOF_SLACK = 1e-3   # an integer margin bound above this is >= 1
_CANDIDATES = 8      # best-scored neurons tried per leaf for a split point that cuts
INTERMEDIATE = "ibp"  # subdomains' intermediate bounds: CROWN from the clipped interval bounds
BETA_ITERATIONS = 20
BETA_LR = 0.1
ALPHA_LR = 0.2


@dataclass
class Outcome:
    proved: bool
    domains: int
    counterexample: torch.Tensor | None = None   # an int8 input (u = q - zp) LiteRT misclassifies
    note: str | None = None


def _channel_op(rq: Requant, c: int, cache: dict):
    key = (id(rq), c)
    if key not in cache:
        one = Requant(rq.q[c:c + 1], rq.shift[c:c + 1], rq.zp, rq.qmin, rq.qmax, (1,), rq.both,
                      "all" if rq.float_requant else "reference")
        cache[key] = one
    return cache[key]


def _last_at_most(f, a: int, b: int, bound: float):
    """Largest integer t in [a, b] with f(t) <= bound (f monotone non-decreasing); None if none."""
    if f(a) > bound:
        return None
    while a < b:
        mid = (a + b + 1) // 2
        if f(mid) <= bound:
            a = mid
        else:
            b = mid - 1
    return a


def split_point(rq: Requant, channel: int, l: int, u: int, cache: dict):
    """An integer t in [l, u - 1] for splitting this neuron's accumulator into [l, t] and
    [t + 1, u] so that one side loses a clamp corner, or None where no such cut exists.
    Tried in order: the side at the bottom corner made exact (F_hi(acc) <= lo on [l, t]),
    the other side lifted off it (F_lo > lo on [t + 1, u]), then the same at the top."""
    one = _channel_op(rq, channel, cache)

    def ends(t):
        v = torch.tensor([[float(t)]], dtype=torch.float64)
        return float(one._exact(v, np.minimum)), float(one._exact(v, np.maximum))
    f_lo = lambda t: ends(t)[0]  # noqa: E731 - two views of one monotone pair
    f_hi = lambda t: ends(t)[1]  # noqa: E731
    for f in (f_hi, f_lo):
        t = _last_at_most(f, l, u, rq.lo)
        if t is not None and t < u:
            return t
    for f in (f_lo, f_hi):  # smallest t with f(t) >= hi is one past the last with f < hi
        t = _last_at_most(lambda v: f(v) - 0.5, l, u, rq.hi - 1)
        if t is not None and t < u:
            return t
    return None


def _integer_pre(pre):
    """Accumulator bounds rounded outward to the integers they contain."""
    return {i: (torch.ceil(l - _TOL - 1e-12 * l.abs()), torch.floor(u + _TOL + 1e-12 * u.abs()))
            for i, (l, u) in pre.items()}


def prove_row(model, u_l, u_u, c, time_limit, reach=None, counterexample=None):
    """Is c·f(u) > 0 for every int8 input u in the box (u_l, u_u: (1, *in_shape) float64 of
    integers, c: (K,))? reach: (lo, hi), the part of the box that real inputs reach, where
    counterexamples are looked for; counterexample(u) -> bool: LiteRT misclassifies u."""
    net = model.net
    relaxed = [i for i, op in enumerate(net.ops) if isinstance(op, Requant)]
    start = time.perf_counter()
    with torch.no_grad():
        root = _integer_pre(net.output_problem(u_l, u_u, c.view(1, 1, -1), "crown")[3].pre)
    cache, domains, explored = {}, [({}, -np.inf)], 0  # (splits {op: (lo, hi)}, the parent's bound)
    r_l, r_u = reach if reach is not None else (u_l, u_u)
    while domains:
        if time.perf_counter() - start > time_limit:
            return Outcome(False, explored, note=f"time limit after {explored} subdomains")
        if explored >= MAX_DOMAINS:
            return Outcome(False, explored, note=f"stopped after {MAX_DOMAINS} subdomains")
        batch, domains = domains[:BATCH], domains[BATCH:]
        D = len(batch)
        explored += D
        splits = [d for d, _ in batch]
        clips = _clips(splits, relaxed, root)
        C = c.view(1, 1, -1).expand(D, 1, -1)
        xl, xu = u_l.expand(D, *u_l.shape[1:]), u_u.expand(D, *u_u.shape[1:])
        with torch.no_grad():
            end, W, const0, lay, slack = net.output_problem(xl, xu, C, INTERMEDIATE, clips)
        empty = torch.zeros(D, dtype=torch.bool)
        for i in relaxed:
            l, u = lay.pre[i]
            empty |= (l > u + 0.5).flatten(1).any(1)
        if empty.all():
            continue
        trace = {}
        lb = beta_bound(net, W, const0 - slack, end, lay, xl, xu, clips, root, relaxed, trace)
        lb = torch.maximum(lb, torch.tensor([b for _, b in batch], dtype=lb.dtype))
        open_ = (~empty & ~(lb > PROOF_SLACK)).nonzero().squeeze(1)
        if not len(open_):
            continue
        if counterexample is not None:
            points = torch.where(trace["input"][:, 0] > 0, xl, xu)[open_]
            points = torch.minimum(torch.maximum(points, r_l), r_u)
            with torch.no_grad():
                margins = (net.forward(points).flatten(1) * c).sum(1)
            for k in (margins < 0.5).nonzero().squeeze(1).tolist():  # an integer margin <= 0
                if counterexample(points[k:k + 1]):
                    return Outcome(False, explored, points[k:k + 1])
        with torch.no_grad():
            scores = _scores(net, lay, trace, relaxed)
        flat = torch.cat([scores[i] for i in relaxed], 1)
        offsets = np.cumsum([0] + [scores[i].shape[1] for i in relaxed])
        for k in open_.tolist():
            children = _split(net, splits[k], lay, relaxed, flat[k], offsets, root, cache, k)
            if children is None:
                return Outcome(False, explored, note="no accumulator left to split")
            domains += [(d, float(lb[k])) for d in children]
    return Outcome(True, explored)


def beta_bound(net, W, const0, end, lay, x_l, x_u, clips, root, relaxed, trace, iterations=BETA_ITERATIONS):
    """Lower bounds (D,) on the spec row W over each subdomain, the requantizations' free
    corner lines optimised (Requant.free_corners: alpha-CROWN) and its split constraints in
    the bound (beta-CROWN's Lagrangian): a split acc_n >= lo holds on the subdomain, so
    subtracting beta (acc_n - lo) with beta >= 0 keeps a CROWN lower bound valid there while
    the concretisation runs over the whole box; likewise + beta (acc_n - hi) for acc_n <= hi.
    beta = 0 is plain CROWN; each step's bound is sound, the best per subdomain is kept.
    The backward pass may also stop at any requantization's output and concretise there over
    that output's exact integer interval on the subdomain (early stops): past the last hidden
    layer that skips the rounding slack of every hidden neuron, which often weighs more than
    the interval's looseness (margin_ibp's merged bound, here with the subdomain's splits).
    The bound is the best of the stops and the full pass.
    trace receives the best bound's linear functions (branching scores, concretising points)."""
    corners = {i: net.ops[i].free_corners(*lay.pre[i]) for i in relaxed if i < end}
    stops = {i: net.ops[i].ibp(*lay.pre[i]) for i in relaxed if i < end}
    lines = {i: c[2] for i, c in corners.items()}
    # alpha starts where lines() chose (1: the sloped line, 0: the flat one)
    a_lo = {i: (c[2][0] != 0).to(W.dtype).requires_grad_(True) for i, c in corners.items() if c[0].any()}
    a_up = {i: (c[2][2] != 0).to(W.dtype).requires_grad_(True) for i, c in corners.items() if c[1].any()}
    cut_lo = {i: (clips[i][0] > root[i][0]).to(W.dtype) for i in lines}
    cut_hi = {i: (clips[i][1] < root[i][1]).to(W.dtype) for i in lines}
    scale = {i: float(net.ops[i].m.mean()) for i in lines}  # beta in output steps per accumulator unit
    b_lo = {i: torch.zeros_like(cut_lo[i], requires_grad=True) for i in lines if cut_lo[i].any()}
    b_hi = {i: torch.zeros_like(cut_hi[i], requires_grad=True) for i in lines if cut_hi[i].any()}

    def bound(record=None):
        A, const = W, const0.clone()
        stopped = None
        for i in reversed(range(end)):
            op = net.ops[i]
            if i in lines:
                if record is not None:
                    record[i] = A
                here = concretize(A, const, *stops[i], True)[:, 0]
                stopped = here if stopped is None else torch.maximum(stopped, here)
                ln = lines[i]
                if i in a_lo or i in a_up:
                    ln = Requant.alpha_lines(corners[i], a_lo.get(i, ln[0]), a_up.get(i, ln[2]))
                A, c = _through_lines(A, ln, True)
                const = const + c
                lo, hi = clips[i]
                if i in b_lo:  # - beta (acc - lo)
                    beta = (b_lo[i] * cut_lo[i] * scale[i]).unsqueeze(1)
                    A, const = A - beta, const + (beta * lo.unsqueeze(1)).flatten(2).sum(-1)
                if i in b_hi:  # + beta (acc - hi)
                    beta = (b_hi[i] * cut_hi[i] * scale[i]).unsqueeze(1)
                    A, const = A + beta, const - (beta * hi.unsqueeze(1)).flatten(2).sum(-1)
            else:
                A, c = op.backward(A)
                const = const + c
        if record is not None:
            record["input"] = A
        full = concretize(A, const, x_l, x_u, True)[:, 0]
        return full if stopped is None else torch.maximum(full, stopped)

    with torch.no_grad():
        best = bound(trace)
    params = list(b_lo.values()) + list(b_hi.values())
    alphas = list(a_lo.values()) + list(a_up.values())
    if not (params or alphas) or iterations == 0:
        return best
    opt = torch.optim.Adam([dict(params=params, lr=BETA_LR), dict(params=alphas, lr=ALPHA_LR)])
    for _ in range(iterations):
        if not (best <= PROOF_SLACK).any():
            break
        with torch.enable_grad():
            value = bound()
            loss = -value[best <= PROOF_SLACK].sum()
            opt.zero_grad()
            loss.backward()
        opt.step()
        with torch.no_grad():
            for p in params:
                p.clamp_(min=0.0)
            for a in alphas:
                a.clamp_(0.0, 1.0)
            better = value.detach() > best
            if better.any():
                record = {}
                now = bound(record)
                for key, A in record.items():
                    trace[key] = torch.where(better.view(-1, *[1] * (A.dim() - 1)), A, trace[key])
                best = torch.maximum(best, now)
    return best


def _scores(net, lay, trace, relaxed):
    """Per relaxed op: (D, neurons) |A| times the relaxation's widest gap; -1 where exact."""
    out = {}
    for i in relaxed:
        l, u = lay.pre[i]
        lo_s, lo_c, up_s, up_c = net.ops[i].lines(l, u)
        gap = torch.maximum((up_s - lo_s) * l + up_c - lo_c, (up_s - lo_s) * u + up_c - lo_c).flatten(1)
        weight = trace[i][:, 0].abs().flatten(1)
        loose = net.ops[i].unstable(l.flatten(1), u.flatten(1)) & (l <= u).flatten(1)
        out[i] = torch.where(loose, weight * gap + 1e-9, torch.full_like(gap, -1.0))
    return out


def _split(net, domain, lay, relaxed, score, offsets, root, cache, k):
    """The two children of one leaf, split at the best-scored neuron that has a cutting point."""
    order = score.argsort(descending=True)[:_CANDIDATES]
    for pos in order.tolist():
        if float(score[pos]) < 0:
            break
        j = int(np.searchsorted(offsets, pos, side="right") - 1)
        i, n = relaxed[j], pos - int(offsets[j])
        rq = net.ops[i]
        l, u = (int(t[k].flatten()[n]) for t in lay.pre[i])
        per_channel = int(np.prod(rq.shape[1:])) if len(rq.shape) > 1 else 1
        t = split_point(rq, n // per_channel, l, u, cache)
        if t is None:
            continue
        children = []
        for lo_v, hi_v in ((l, t), (t + 1, u)):
            child = dict(domain)
            lo, hi = child.get(i, (root[i][0][0], root[i][1][0]))
            lo, hi = lo.reshape(-1).clone(), hi.reshape(-1).clone()
            lo[n], hi[n] = float(lo_v), float(hi_v)
            child[i] = (lo.view(rq.shape), hi.view(rq.shape))
            children.append(child)
        return children
    return None
