"""Branch and bound over ReLU splits: what CROWN leaves open, settled by cases.

A margin row that CROWN cannot prove positive on the box is split on one unstable ReLU input
z: one subdomain assumes z >= 0, the other z <= 0, and the union is the box again. The box's
CROWN intermediate bounds hold in every subdomain; each subdomain intersects them with what
its splits assume (BoundedNet's clips) and with the interval bounds that follow from that,
which makes the split neuron exact and tightens what comes after it. Where CROWN leaves a
batch's subdomain open, beta-CROWN (Wang et al., NeurIPS 2021) puts the splits into the bound
itself: one Lagrange multiplier beta >= 0 per split, optimised jointly with the output's ReLU
lower slopes by projected Adam (_alpha_beta). A subdomain whose bounds contradict its
splits is empty. The row is proved when every leaf is proved or empty;
a leaf's concretising point that the runtime misclassifies is a counterexample. Bounds are
the sound float32 ones (verify.rounding), so a split on z is a split on the value the float32
runtime computes, rounding included.

Branching follows BaBSR's intercept score (Bunel et al., JMLR 2020): the neuron whose upper
line's intercept, weighted by how much the bound's linear function leans on it, costs the
bound most. Many subdomains are bounded in one batched call.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .bounds import BoundedNet
from .ops import ReLU

BATCH = 64          # subdomains bounded per call
MAX_DOMAINS = 20_000  # per margin row: past it the row stays open
ITERATIONS = 10     # beta-CROWN's projected Adam steps per batch of subdomains
LEARNING_RATE = 0.1


@dataclass
class Outcome:
    proved: bool
    lower: float                    # the weakest leaf's bound (a sound lower bound on the row)
    counterexample: torch.Tensor | None = None
    note: str | None = None


def _score(net, lay, trace, relus):
    """Per relaxed op: (D, neurons) BaBSR-style score; 0 for stable or split neurons."""
    scores = {}
    for i in relus:
        l, u = (t.flatten(1) for t in lay.pre[i])
        unstable = ReLU.unstable(l, u)
        icpt = torch.where(unstable, -l * u / torch.where(unstable, u - l, torch.ones_like(u)), torch.zeros_like(u))
        lean = trace[i][:, 0].flatten(1).neg().clamp(min=0)  # A < 0 takes the upper line
        scores[i] = torch.where(unstable, lean * icpt + 1e-9 * (u - l), torch.full_like(u, -1.0))
    return scores


def prove_row(net: BoundedNet, x_l, x_u, c, time_limit, counterexample=None):
    """Is c·f(x) > 0 on the box (x_l, x_u: (1, *in_shape), c: (K,), all in net's dtype)?
    counterexample(x) -> bool: the runtime misclassifies x (a point of the box)."""
    relus = [i for i, op in enumerate(net.ops) if isinstance(op, ReLU)]
    start = time.perf_counter()
    with torch.no_grad():  # the box's own intermediate bounds, once
        root = net.output_problem(x_l, x_u, c.view(1, 1, -1), "crown")[3].pre
    domains = [({}, -torch.inf)]  # (splits {op index: (lo, hi)}, the parent's bound)
    weakest, explored = torch.inf, 0  # the lowest bound of a proved leaf
    while domains:
        unsettled = min(b for _, b in domains)
        if time.perf_counter() - start > time_limit:
            return Outcome(False, min(weakest, unsettled), note=f"time limit after {explored} subdomains")
        if explored >= MAX_DOMAINS:
            return Outcome(False, min(weakest, unsettled), note=f"stopped after {MAX_DOMAINS} subdomains")
        batch, domains = domains[:BATCH], domains[BATCH:]
        D = len(batch)
        explored += D
        clips = _clips([d for d, _ in batch], relus, root)
        C = c.view(1, 1, -1).expand(D, 1, -1)
        xl, xu = x_l.expand(D, *x_l.shape[1:]), x_u.expand(D, *x_u.shape[1:])
        with torch.no_grad():
            end, W, const0, lay, slack = net.output_problem(xl, xu, C, "ibp", clips)
            trace = {}
            lb = net.output_bound(W, const0, end, lay, slack, xl, xu, True, trace=trace)[:, 0]
        lb = _alpha_beta(net, (end, W, const0, lay, slack), xl, xu, _signs([d for d, _ in batch], relus, root), lb)
        lb = torch.maximum(lb, torch.tensor([b for _, b in batch], dtype=lb.dtype, device=lb.device))
        empty = torch.zeros(D, dtype=torch.bool, device=lb.device)
        for i in relus:
            l, u = lay.pre[i]
            empty |= (l > u).flatten(1).any(1)
        proved = ~empty & (lb > 0)
        if proved.any():
            weakest = min(weakest, float(lb[proved].min()))
        open_ = (~empty & ~proved).nonzero().squeeze(1)
        if not len(open_):
            continue
        points = torch.where(trace["input"][:, 0] > 0, xl, xu)  # where each leaf's linear bound is lowest
        lowest = int(open_[lb[open_].argmin()])
        if counterexample is not None and counterexample(points[lowest:lowest + 1]):
            return Outcome(False, float(lb[lowest]), points[lowest:lowest + 1])
        scores = _score(net, lay, trace, relus)
        best = torch.stack([sc.max(1).values for sc in scores.values()], 1)  # (D, relu ops)
        for k in open_.tolist():
            if float(best[k].max()) < 0:  # every neuron stable or split: nothing left to try
                return Outcome(False, min(weakest, float(lb[k]), unsettled), note="every ReLU split and still open")
            i = relus[int(best[k].argmax())]
            n = int(scores[i][k].argmax())
            for side in (0, 1):  # z >= 0, then z <= 0
                child = dict(batch[k][0])
                free = root[i][0][0]
                lo, hi = child.get(i, (torch.full_like(free, -torch.inf), torch.full_like(free, torch.inf)))
                lo, hi = lo.clone(), hi.clone()
                (lo if side == 0 else hi).view(-1)[n] = 0.0
                child[i] = (lo, hi)
                domains.append((child, float(lb[k])))
    return Outcome(True, weakest)


def _signs(batch, relus, root):
    """Per relaxed op: (D, *neuron) +1 where a subdomain assumes z >= 0, -1 where z <= 0, else 0."""
    out = {}
    for i in relus:
        sign = torch.zeros(len(batch), *root[i][0].shape[1:], dtype=root[i][0].dtype, device=root[i][0].device)
        for k, d in enumerate(batch):
            if i in d:
                sign[k] = (d[i][0] == 0).to(sign.dtype) - (d[i][1] == 0).to(sign.dtype)
        if sign.ne(0).any():
            out[i] = sign
    return out


def _alpha_beta(net, problem, xl, xu, signs, lb, iterations=ITERATIONS, lr=LEARNING_RATE):
    """beta-CROWN on a batch of subdomains: the best of lb (CROWN's) and the bounds of
    iterations projected Adam steps on the output's lower slopes (alpha in [0, 1] on unstable
    neurons) and one multiplier beta >= 0 per split. On a subdomain that assumes s·z >= 0 for
    each split neuron z (s = +-1), c·f(x) >= c·f(x) - sum beta·s·z(x) for any beta >= 0, so
    every step's linear bound is sound; its A takes -beta·s at z (BoundedNet's betas). Beta
    enters A as one float addition, whose rounding (monotone) only moves beta within >= 0."""
    end, W, const0, lay, slack = problem
    if bool((lb > 0).all()):
        return lb
    fixed, unstable, alpha = {}, {}, {}
    for i, (l, u) in lay.pre.items():
        if isinstance(net.ops[i], ReLU):
            fixed[i] = ReLU.lines(l, u)[0].unsqueeze(1)
            unstable[i] = ReLU.unstable(l, u).unsqueeze(1)
            if unstable[i].any():
                alpha[i] = fixed[i].clone().requires_grad_(True)
    beta = {i: torch.zeros_like(sg).unsqueeze(1).requires_grad_(True) for i, sg in signs.items()}
    if not alpha and not beta:
        return lb
    opt = torch.optim.Adam(list(alpha.values()) + list(beta.values()), lr=lr)
    best = lb.clone()

    def bound():
        slopes = {i: torch.where(unstable[i], a, fixed[i]) for i, a in alpha.items()}
        betas = {i: -b * signs[i].unsqueeze(1) for i, b in beta.items()}
        return net.output_bound(W, const0, end, lay, slack, xl, xu, True, slopes=slopes, betas=betas)[:, 0]

    with torch.enable_grad():
        for _ in range(iterations):
            b = bound()
            best = torch.maximum(best, b.detach())
            open_ = best <= 0
            if not bool(open_.any()):
                return best
            params = list(alpha.values()) + list(beta.values())
            for p, g in zip(params, torch.autograd.grad(-b[open_].sum(), params)):
                p.grad = g
            opt.step()
            with torch.no_grad():
                for a in alpha.values():
                    a.clamp_(0.0, 1.0)
                for v in beta.values():
                    v.clamp_(min=0.0)
    with torch.no_grad():
        return torch.maximum(best, bound())


def _clips(batch, relus, root):
    """Per relaxed op: (D, *neuron) bounds each subdomain may assume: the box's, cut by its splits."""
    out = {}
    for i in relus:
        lo = root[i][0].expand(len(batch), *root[i][0].shape[1:]).clone()
        hi = root[i][1].expand(len(batch), *root[i][1].shape[1:]).clone()
        for k, d in enumerate(batch):
            if i in d:
                lo[k], hi[k] = torch.maximum(lo[k], d[i][0]), torch.minimum(hi[k], d[i][1])
        out[i] = (lo, hi)
    return out
