"""alpha-CROWN: CROWN whose ReLU lower lines are optimised instead of chosen by rule.

CROWN bounds an unstable ReLU (l < 0 < u) from below by alpha·x for a fixed alpha (0 or 1);
every alpha in [0, 1] gives a sound bound, so alpha can be chosen per neuron, separately for
each spec row, by gradient ascent on the bound itself (Xu et al., "Fast and Complete", ICLR
2021). Each step's bound is a sound bound in its own right, so the best seen per row is
returned: never below CROWN's (the first step is CROWN), and as sound as CROWN whatever the
optimiser does.

The intermediate layers' bounds are optimised the same way (verify.alpha_layers): each unstable
neuron's lower and upper bound gets its own slopes for the ReLUs below it, and every step bounds
it again; the tighter of that and the best bound so far is what the layers above relax with, so
the output's gradient reaches the intermediate slopes through those bounds. A layer whose slopes
would not fit MAX_INTERMEDIATE keeps CROWN's bounds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .alpha_layers import MAX_INTERMEDIATE, Intermediate
from .bounds import BoundedNet
from .ops import ReLU

ITERATIONS = 20
LEARNING_RATE = 0.25


@dataclass
class Optimised:
    lower: torch.Tensor   # (B, S) the best lower bound per spec row
    pre: dict             # relaxed op index -> (l, u): the tightest input bounds found
    slopes: dict          # ReLU op index -> (B, S, *neuron): the output's lower slopes of each row's best step


def alpha_crown(net: BoundedNet, x_l, x_u, C, iterations=ITERATIONS, lr=LEARNING_RATE, stop_at=0.0,
                intermediate=MAX_INTERMEDIATE):
    """Lower bounds (B, S) on C·f(x) over the box; rows whose bound passes stop_at stop moving."""
    return optimise(net, x_l, x_u, C, iterations, lr, stop_at, intermediate).lower


def optimise(net: BoundedNet, x_l, x_u, C, iterations=ITERATIONS, lr=LEARNING_RATE, stop_at=0.0,
             intermediate=MAX_INTERMEDIATE, time_limit=None) -> Optimised:
    """alpha-CROWN on C·f(x) over the box; intermediate: the most slope entries the intermediate
    layers may take (0: CROWN's intermediate bounds, only the output's slopes optimised);
    time_limit: seconds after which no further step starts (the best so far is as sound)."""
    start = time.perf_counter()
    with torch.no_grad():
        end, W, const0, lay, slack = net.output_problem(x_l, x_u, C, "crown")
    relus = [i for i in lay.pre if isinstance(net.ops[i], ReLU)]
    S = W.shape[1]
    live = C.abs().flatten(2).sum(-1) > 0  # a zero row (the true class's own margin) is exactly 0
    with torch.no_grad():
        best = net.output_bound(W, const0, end, lay, slack, x_l, x_u, True)
    # per spec row: alpha (B, S, *neuron) starting at CROWN's slope
    alpha = {i: ReLU.lines(*lay.pre[i])[0].unsqueeze(1).expand(-1, S, *lay.pre[i][0].shape[1:]).clone()
             for i in relus}
    kept = {i: a.clone() for i, a in alpha.items()}
    if not relus or not bool(((best <= stop_at) & live).any()):
        return Optimised(best, dict(lay.pre), kept)
    inner = Intermediate(net, lay, x_l, x_u, relus, intermediate)
    for a in alpha.values():
        a.requires_grad_(True)
    opt = torch.optim.Adam(list(alpha.values()) + inner.parameters(), lr=lr)

    def step():  # the output's bound with this step's intermediate bounds; alpha where unstable
        cur = inner.layers()
        slopes = {}
        for i in relus:
            fixed = ReLU.lines(*(t.detach() for t in cur.pre[i]))[0].unsqueeze(1)
            slopes[i] = torch.where(ReLU.unstable(*cur.pre[i]).unsqueeze(1), alpha[i], fixed)
        return net.output_bound(W, const0, end, cur, slack, x_l, x_u, True, slopes=slopes), slopes

    def keep(bound, slopes):
        nonlocal best
        better = bound.detach() > best
        for i in relus:
            kept[i] = torch.where(better.view(*better.shape, *[1] * (kept[i].dim() - 2)), slopes[i].detach(), kept[i])
        best = torch.maximum(best, bound.detach())

    with torch.enable_grad():
        for _ in range(iterations):
            open_rows = (best <= stop_at) & live
            if not open_rows.any() or (time_limit is not None and time.perf_counter() - start > time_limit):
                break
            bound, slopes = step()
            keep(bound, slopes)
            inner.remember()
            params = list(alpha.values()) + inner.parameters()
            # grads of the slopes only: the net's own tensors (a model's weights) stay untouched
            for p, g in zip(params, torch.autograd.grad(-bound[open_rows].sum(), params, allow_unused=True)):
                p.grad = g
            opt.step()
            with torch.no_grad():
                for p in params:
                    p.clamp_(0.0, 1.0)
        with torch.no_grad():
            keep(*step())
            inner.remember()
    return Optimised(best, inner.best, kept)
