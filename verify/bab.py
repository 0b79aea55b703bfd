"""Branch and bound over ReLU splits: what alpha-CROWN leaves open, settled by cases.

A margin row that alpha-CROWN cannot prove positive on the box is split on one unstable ReLU
input z: one subdomain assumes z >= 0, the other z <= 0, and the union is the box again. The
box's alpha-CROWN intermediate bounds (optimised, verify.alpha_layers) hold in every subdomain;
each subdomain intersects them with what its splits assume (BoundedNet's clips) and with the
interval bounds that follow from that, which makes the split neuron exact and tightens what
comes after it. beta-CROWN (Wang et al., NeurIPS 2021) puts the splits into the bound itself:
one Lagrange multiplier beta >= 0 per split, optimised jointly with the output's ReLU lower
slopes by projected Adam (_alpha_beta), starting from the parent's slopes and betas (the
root's alpha-CROWN slopes first), so a child never restarts from CROWN's. A subdomain whose
bounds contradict its splits is empty. The row is proved when every leaf is proved or empty;
a leaf's concretising point that the runtime misclassifies is a counterexample. Bounds are
the sound ones (verify.rounding), so a split on z is a split on the value the float32 runtime
computes, rounding included.

Branching is filtered smart branching (De Palma et al., ICLR 2021): BaBSR's intercept score
(Bunel et al., JMLR 2020; the neuron whose upper line's intercept, weighted by how much the
bound's linear function leans on it, costs the bound most) picks a few candidates per layer,
and one CROWN pass on each candidate's two children picks the split. Many subdomains are
bounded in one batched call.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .alpha_crown import Optimised, optimise
from .bounds import BoundedNet
from .ops import ReLU

BATCH = 64          # subdomains bounded per call
MAX_DOMAINS = 20_000  # per margin row: past it the row stays open
ITERATIONS = 20     # beta-CROWN's projected Adam steps per batch of subdomains
LEARNING_RATE = 0.1
CANDIDATES = 3      # per ReLU layer, the best-scored neurons smart branching bounds the children of
FSB_ROWS = 512      # child subdomains per bound call while branching


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


def prove_row(net: BoundedNet, x_l, x_u, c, time_limit, counterexample=None, root: Optimised | None = None):
    """Is c·f(x) > 0 on the box (x_l, x_u: (1, *in_shape), c: (K,), all in net's dtype)?
    counterexample(x) -> bool: the runtime misclassifies x (a point of the box).
    root: alpha-CROWN on this row over the box (its lower (1, 1), slopes (1, 1, *neuron)), computed
    here when not given: its intermediate bounds hold in every subdomain, and every subdomain's
    slopes start from its parent's (the root's first)."""
    relus = [i for i, op in enumerate(net.ops) if isinstance(op, ReLU)]
    start = time.perf_counter()
    if root is None:
        root = optimise(net, x_l, x_u, c.view(1, 1, -1))
    if float(root.lower[0, 0]) > 0:
        return Outcome(True, float(root.lower[0, 0]))
    pre = root.pre
    idx = {i: ReLU.unstable(*pre[i]).flatten().nonzero().squeeze(1) for i in relus}
    warm0 = {i: (root.slopes[i].flatten()[idx[i]], torch.zeros_like(idx[i], dtype=x_l.dtype)) for i in relus}
    # (splits {op index: (lo, hi)}, the parent's bound, the parent's slopes and betas on idx)
    domains = [({}, float(root.lower[0, 0]), warm0)]
    weakest, explored = torch.inf, 0  # the lowest bound of a proved leaf
    while domains:
        unsettled = min(b for _, b, _ in domains)
        if time.perf_counter() - start > time_limit:
            return Outcome(False, min(weakest, unsettled), note=f"time limit after {explored} subdomains")
        if explored >= MAX_DOMAINS:
            return Outcome(False, min(weakest, unsettled), note=f"stopped after {MAX_DOMAINS} subdomains")
        batch, domains = domains[:BATCH], domains[BATCH:]
        D = len(batch)
        explored += D
        splits = [d for d, _, _ in batch]
        clips = _clips(splits, relus, pre)
        C = c.view(1, 1, -1).expand(D, 1, -1)
        xl, xu = x_l.expand(D, *x_l.shape[1:]), x_u.expand(D, *x_u.shape[1:])
        with torch.no_grad():
            problem = net.output_problem(xl, xu, C, "ibp", clips)
            lay = problem[3]
        parent = torch.tensor([b for _, b, _ in batch], dtype=x_l.dtype, device=x_l.device)
        state = {}
        lb = _alpha_beta(net, problem, xl, xu, _signs(splits, relus, pre), parent.clone(),
                         warm=_expand([w for _, _, w in batch], idx, lay.pre), state=state)
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
        trace = state["trace"]
        points = torch.where(trace["input"][:, 0] > 0, xl, xu)  # where each leaf's linear bound is lowest
        lowest = int(open_[lb[open_].argmin()])
        if counterexample is not None and counterexample(points[lowest:lowest + 1]):
            return Outcome(False, float(lb[lowest]), points[lowest:lowest + 1])
        scores = _score(net, lay, trace, relus)
        choice = _branch(net, (xl, xu, C, clips), state, _signs(splits, relus, pre), scores, open_)
        for k, (i, n) in zip(open_.tolist(), choice):
            if i is None:  # every neuron stable or split: nothing left to try
                return Outcome(False, min(weakest, float(lb[k]), unsettled), note="every ReLU split and still open")
            warm = {j: (state["alpha"][j][k].flatten()[idx[j]], state["beta"][j][k].flatten()[idx[j]])
                    for j in relus}
            for side in (0, 1):  # z >= 0, then z <= 0
                child = dict(splits[k])
                free = pre[i][0][0]
                lo, hi = child.get(i, (torch.full_like(free, -torch.inf), torch.full_like(free, torch.inf)))
                lo, hi = lo.clone(), hi.clone()
                (lo if side == 0 else hi).view(-1)[n] = 0.0
                child[i] = (lo, hi)
                domains.append((child, float(lb[k]), warm))
    return Outcome(True, weakest)


def _branch(net, box, state, signs, scores, open_):
    """(op, neuron) to split for each open domain, by filtered smart branching (De Palma et al.,
    ICLR 2021): the CANDIDATES best BaBSR scores of each ReLU layer are tried, each child bounded
    by one CROWN pass with the domain's slopes and betas, and the candidate whose weaker child
    bounds highest wins (an empty child counts as proved). (None, None) where nothing is left."""
    xl, xu, C, clips = box
    relus = list(scores)
    cands = []  # (D_open, m) op position and neuron, -1 for none
    for p, i in enumerate(relus):
        top = scores[i][open_].topk(min(CANDIDATES, scores[i].shape[1]), 1)
        n = torch.where(top.values >= 0, top.indices, torch.full_like(top.indices, -1))
        cands.append((torch.full_like(n, p), n))
    ops, neurons = torch.cat([o for o, _ in cands], 1), torch.cat([n for _, n in cands], 1)
    D, m = neurons.shape
    value = torch.full((D, m), -torch.inf, dtype=xl.dtype, device=xl.device)
    pairs = (neurons >= 0).nonzero()  # (domain, candidate) to evaluate
    for part in pairs.split(max(1, FSB_ROWS // 2)) if len(pairs) else ():
        k, c = part[:, 0], part[:, 1]
        dom = open_[k].repeat_interleave(2)
        side = torch.arange(2, device=xl.device).repeat(len(part))
        child = {}
        for p, i in enumerate(relus):
            lo, hi = (t[dom].flatten(1).clone() for t in clips[i])
            r = ((ops[k, c] == p).repeat_interleave(2)).nonzero().squeeze(1)
            n = neurons[k, c].repeat_interleave(2)[r]
            up, down = r[side[r] == 0], r[side[r] == 1]  # z >= 0, z <= 0
            lo[up, n[side[r] == 0]] = lo[up, n[side[r] == 0]].clamp(min=0.0)
            hi[down, n[side[r] == 1]] = hi[down, n[side[r] == 1]].clamp(max=0.0)
            child[i] = (lo.view(-1, *clips[i][0].shape[1:]), hi.view(-1, *clips[i][1].shape[1:]))
        with torch.no_grad():
            problem = net.output_problem(xl[dom], xu[dom], C[dom], "ibp", child)
            lay = problem[3]
            params = ({i: a[dom] for i, a in state["alpha"].items()}, {i: b[dom] for i, b in state["beta"].items()})
            b = _fixed_bound(net, problem, xl[dom], xu[dom], params, {i: sg[dom] for i, sg in signs.items()})
            empty = torch.zeros_like(b, dtype=torch.bool)
            for i in relus:
                empty |= (lay.pre[i][0] > lay.pre[i][1]).flatten(1).any(1)
        b = torch.where(empty, torch.full_like(b, torch.inf), b).view(-1, 2)
        value[k, c] = b.min(1).values + 1e-6 * b.max(1).values.clamp(max=1e6)
    best = value.argmax(1)
    out = []
    for k in range(D):
        c = int(best[k])
        ok = bool(neurons[k, c] >= 0)
        out.append((relus[int(ops[k, c])], int(neurons[k, c])) if ok else (None, None))
    return out


def _fixed_bound(net, problem, xl, xu, params, signs, trace=None):
    """The domains' CROWN bound with given lower slopes (where a neuron is unstable) and betas."""
    end, W, const0, lay, slack = problem
    alpha, beta = params
    slopes, betas = {}, {}
    for i, a in alpha.items():
        l, u = lay.pre[i]
        slopes[i] = torch.where(ReLU.unstable(l, u).unsqueeze(1), a, ReLU.lines(l, u)[0].unsqueeze(1))
        if i in signs:
            betas[i] = -beta[i] * signs[i].unsqueeze(1)
    return net.output_bound(W, const0, end, lay, slack, xl, xu, True, slopes=slopes, betas=betas, trace=trace)[:, 0]


def _expand(warm, idx, pre):
    """Per relu op: (D, 1, *neuron) slopes and betas from each domain's values on idx (the
    root's unstable neurons; a neuron stable at the root is stable in every subdomain)."""
    alpha, beta = {}, {}
    for i, where in idx.items():
        l = pre[i][0]
        a = ReLU.lines(*pre[i])[0].flatten(1).clone()
        b = torch.zeros_like(a)
        a[:, where] = torch.stack([w[i][0] for w in warm])
        b[:, where] = torch.stack([w[i][1] for w in warm])
        alpha[i], beta[i] = a.view_as(l).unsqueeze(1), b.view_as(l).unsqueeze(1)
    return alpha, beta


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


def _alpha_beta(net, problem, xl, xu, signs, lb, iterations=ITERATIONS, lr=LEARNING_RATE, warm=None, state=None):
    """beta-CROWN on a batch of subdomains: the best of lb (a sound bound given: CROWN's, or the
    parent's) and the bounds of iterations projected Adam steps on the output's lower slopes
    (alpha in [0, 1] on unstable neurons) and one multiplier beta >= 0 per split. On a subdomain
    that assumes s·z >= 0 for each split neuron z (s = +-1), c·f(x) >= c·f(x) - sum beta·s·z(x)
    for any beta >= 0, so every step's linear bound is sound; its A takes -beta·s at z
    (BoundedNet's betas). Beta enters A as one float addition, whose rounding (monotone) only
    moves beta within >= 0. warm: ({op: (D, 1, *neuron) slopes}, {op: betas}) to start from
    (CROWN's slopes and zeros when None). state: a dict that receives each domain's best slopes
    and betas ("alpha", "beta": {op: (D, 1, *neuron)}) and the trace of a pass with them."""
    end, W, const0, lay, slack = problem
    alpha, beta, unstable = {}, {}, {}
    for i, (l, u) in lay.pre.items():
        if isinstance(net.ops[i], ReLU):
            unstable[i] = ReLU.unstable(l, u).unsqueeze(1)
            fixed = ReLU.lines(l, u)[0].unsqueeze(1)
            start = fixed if warm is None else torch.where(unstable[i], warm[0][i].clamp(0.0, 1.0), fixed)
            alpha[i] = start.clone().requires_grad_(True)
            beta[i] = (torch.zeros_like(fixed) if warm is None else warm[1][i].clone()).requires_grad_(True)
    best = lb.clone()
    kept = ({i: a.detach().clone() for i, a in alpha.items()}, {i: b.detach().clone() for i, b in beta.items()})
    opt = torch.optim.Adam(list(alpha.values()) + list(beta.values()), lr=lr)

    def bound(params, trace=None):
        return _fixed_bound(net, problem, xl, xu, params, signs, trace)

    def keep(b, params):
        nonlocal best
        better = b.detach() > best
        for k, p in zip(kept, params):
            for i in p:
                k[i] = torch.where(better.view(-1, *[1] * (k[i].dim() - 1)), p[i].detach(), k[i])
        best = torch.maximum(best, b.detach())

    if alpha and not bool((lb > 0).all()):
        with torch.enable_grad():
            for _ in range(iterations):
                b = bound((alpha, beta))
                keep(b, (alpha, beta))
                open_ = best <= 0
                if not bool(open_.any()):
                    break
                params = list(alpha.values()) + list(beta.values())
                for p, g in zip(params, torch.autograd.grad(-b[open_].sum(), params, allow_unused=True)):
                    p.grad = g
                opt.step()
                with torch.no_grad():
                    for a in alpha.values():
                        a.clamp_(0.0, 1.0)
                    for v in beta.values():
                        v.clamp_(min=0.0)
    with torch.no_grad():
        trace = {}
        keep(bound(kept, trace), kept)
    if state is not None:
        state.update(alpha=kept[0], beta=kept[1], trace=trace)
    return best


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
