"""PGD under an L-inf ball clipped to [0, 1]: the upper end of every robustness ladder.

A point PGD breaks has a real counterexample, so no sound verifier can verify it; the
evaluation skips the costly bounds there."""
from __future__ import annotations

import torch


def pgd(forward, x, y, eps, steps=20, restarts=1, lo=0.0, hi=1.0, generator=None):
    """Returns (x_adv, broken): broken[i] is True when x_adv[i] is misclassified.

    Maximises the best wrong-class margin max_j z_j - z_y with signed-gradient steps of
    2.5 * eps / steps from a random start."""
    x_l, x_u = (x - eps).clamp(lo, hi), (x + eps).clamp(lo, hi)
    best, broken = x.clone(), torch.zeros(len(y), dtype=torch.bool, device=x.device)
    step = 2.5 * eps / steps
    for _ in range(restarts):
        live = (~broken).nonzero().squeeze(1)  # a point stops being attacked once it breaks
        adv = x_l[live] + (x_u[live] - x_l[live]) * torch.rand(x[live].shape, generator=generator).to(x.device)
        for _ in range(steps + 1):
            with torch.enable_grad():
                adv.requires_grad_(True)
                logits = forward(adv)
                own = logits.gather(1, y[live, None]).squeeze(1)
                other = logits.scatter(1, y[live, None], float("-inf")).max(1).values
                grad, = torch.autograd.grad((other - own).sum(), adv)
            now = (other > own).detach()
            best[live[now]], broken[live[now]] = adv[now].detach(), True
            keep = ~now
            if not keep.any():
                break
            live, adv, grad = live[keep], adv[keep].detach(), grad[keep]
            adv = torch.min(torch.max(adv + step * grad.sign(), x_l[live]), x_u[live])
    return best, broken
