"""Sparse masks: how many weights or units each layer keeps, which ones, and how the
choice moves during training.

Unstructured: ERK per-layer densities turned into integer counts whose total is exactly
round((1 - sparsity) * weights); prune-and-regrow keeps every layer's count, so the total
is exact at every step (with gradual pruning, from the end of its window on). Structured:
whole neurons/filters of the hidden layers, as many as a parameter budget allows, where a
removed unit also removes the next layer's inputs. Gradual pruning (either kind) thins the
mask from a denser start to the final counts on a cubic schedule.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from verisparse.errors import VeriSparseError

from .models import prunable


# --- accounting ---------------------------------------------------------------------------

def _in_alive(model, layers, k):
    """1/0 per input feature or channel of prunable layer k: does its source unit exist?"""
    _, m = layers[k]
    n_in = m.weight.shape[1]
    if k == 0:
        return torch.ones(n_in, device=m.weight.device)
    prev = layers[k - 1][1].out_mask
    return prev.repeat_interleave(n_in // prev.numel())  # a flattened conv feeds C*H*W inputs


def alive_masks(model: nn.Sequential):
    """Per prunable layer: (index, module, 0/1 tensor of the weights that count: unmasked, of a
    kept unit, fed by a kept unit)."""
    layers = prunable(model)
    for k, (i, m) in enumerate(layers):
        alive_in = _in_alive(model, layers, k).view(1, -1, *([1] * (m.weight.dim() - 2)))
        yield i, m, m.weight_mask * m.out_mask.view(-1, *([1] * (m.weight.dim() - 1))) * alive_in


def mask_changes(before, after):
    """How many weights changed between alive and dead across two alive_masks snapshots."""
    return sum(int((a != b).sum()) for a, b in zip(before, after))


def layer_stats(model: nn.Sequential):
    """Per prunable layer: name, dense weight count and effective (alive) weight count."""
    stats = []
    for i, m, alive in alive_masks(model):
        stats.append(dict(layer=f"{i}:{type(m).__name__.replace('Masked', '')}", dense=m.weight.numel(),
                          effective=int(alive.sum().item()),
                          units=int(m.out_mask.sum().item()), dense_units=m.out_mask.numel()))
    return stats


def sparsity_summary(model):
    stats = layer_stats(model)
    dense = sum(s["dense"] for s in stats)
    eff = sum(s["effective"] for s in stats)
    for s in stats:
        s["sparsity"] = round(1 - s["effective"] / s["dense"], 6)
    return dict(sparsity=1 - eff / dense, effective_params=eff, dense_params=dense, layers=stats)


# --- unstructured ----------------------------------------------------------------------

def erk_counts(model, sparsity: float):
    """Active weights per layer: ERK densities (capped at 1) with an exact integer total."""
    layers = [m for _, m in prunable(model)]
    sizes = [m.weight.numel() for m in layers]
    total = round((1 - sparsity) * sum(sizes))
    raw = [sum(m.weight.shape) / m.weight.numel() for m in layers]
    dense = set()
    while True:
        rest = total - sum(sizes[k] for k in dense)
        scale = rest / sum(raw[k] * sizes[k] for k in range(len(layers)) if k not in dense)
        over = {k for k in range(len(layers)) if k not in dense and scale * raw[k] > 1}
        if not over:
            break
        dense |= over
    target = [sizes[k] if k in dense else scale * raw[k] * sizes[k] for k in range(len(layers))]
    counts = [min(sizes[k], max(1, math.floor(t))) for k, t in enumerate(target)]
    # Hand out the rounding remainder by largest fractional part, then take back any excess.
    order = sorted(range(len(layers)), key=lambda k: target[k] - math.floor(target[k]), reverse=True)
    while sum(counts) < total:
        for k in order:
            if sum(counts) < total and counts[k] < sizes[k]:
                counts[k] += 1
    while sum(counts) > total:
        k = max(range(len(layers)), key=lambda k: counts[k])
        counts[k] -= 1
    return counts


def _keep_top(mask, scores, count):
    mask.zero_().view(-1)[torch.topk(scores.flatten(), count).indices] = 1.0


@torch.no_grad()
def random_unstructured(model, sparsity, generator):
    for (_, m), n in zip(prunable(model), erk_counts(model, sparsity)):
        _keep_top(m.weight_mask, torch.rand(m.weight.shape, generator=generator).to(m.weight.device), n)
        m.weight.mul_(m.weight_mask)


@torch.no_grad()
def magnitude_unstructured(model, sparsity):
    """Keep the largest-magnitude weights, layer by layer, with the same ERK counts."""
    for (_, m), n in zip(prunable(model), erk_counts(model, sparsity)):
        _keep_top(m.weight_mask, (m.weight * m.weight_mask).abs(), n)
        m.weight.mul_(m.weight_mask)


@torch.no_grad()
def prune_regrow(model, fraction: float, grads=None, generator=None):
    """Drop the smallest-magnitude fraction of each layer's active weights and regrow as
    many inactive ones, by dense-gradient magnitude (RigL) or at random when grads is None.
    Regrown weights start at zero. Returns the number of weights moved."""
    moved = 0
    for k, (_, m) in enumerate(prunable(model)):
        mask = m.weight_mask.view(-1)
        active = mask.bool()
        n = int(fraction * active.sum().item())
        n = min(n, int((~active).sum().item()))
        if n == 0:
            continue
        w = m.weight.view(-1)
        drop = torch.topk(torch.where(active, w.abs(), torch.full_like(w, math.inf)), n, largest=False).indices
        if grads is not None:
            score = grads[k].reshape(-1).abs()
        else:
            score = torch.rand(w.shape, generator=generator).to(w.device)
        grow = torch.topk(torch.where(active, torch.full_like(w, -math.inf), score), n).indices
        mask[drop] = 0.0
        mask[grow] = 1.0
        w.mul_(mask)
        moved += n
    return moved


def gradual_density(step, window_steps, initial: float, final: float):
    """Zhu & Gupta's cubic schedule: density from initial to final over the window's steps,
    fastest at first, when the network can best recover from what is taken away."""
    t = min(1.0, step / window_steps)
    return final + (initial - final) * (1 - t) ** 3


@torch.no_grad()
def thin_unstructured(model, density: float, final_counts):
    """Gradual pruning: each layer keeps its largest-magnitude active weights, as many as the
    ERK counts at this density allow (never more than it has, never fewer than its final
    count, so the window ends at exactly the final budget). Returns the number removed."""
    removed = 0
    for (_, m), n, floor in zip(prunable(model), erk_counts(model, 1 - density), final_counts):
        active = m.weight_mask.bool()
        have = int(active.sum().item())
        n = max(floor, min(n, have))
        if n == have:
            continue
        # Inactive weights score below every active one: regrown weights sit at exactly zero.
        _keep_top(m.weight_mask, torch.where(active, m.weight.abs(), torch.full_like(m.weight, -1.0)), n)
        m.weight.mul_(m.weight_mask)
        removed += have - n
    return removed


def update_fraction(step, total_steps, initial: float, end_fraction: float):
    """RigL's cosine-decayed update fraction; zero once end_fraction of training has passed."""
    end = end_fraction * total_steps
    if step >= end:
        return 0.0
    return initial / 2 * (1 + math.cos(math.pi * step / end))


# --- structured -----------------------------------------------------------------------

def _param_count(model, keep):
    """Weights of the network if hidden layer k keeps keep[k] units (the last layer keeps all)."""
    layers = [m for _, m in prunable(model)]
    total, prev_units, prev_dense = 0, None, None
    for k, m in enumerate(layers):
        per_in = m.weight[0].numel()
        if prev_units is not None:
            per_in = per_in * prev_units // prev_dense  # the removed inputs of this layer
        total += keep[k] * per_in
        prev_units, prev_dense = keep[k], m.weight.shape[0]
    return total


def structured_counts(model, sparsity=None, budget=None):
    """Units kept per prunable layer: the largest uniform keep ratio within the budget."""
    layers = [m for _, m in prunable(model)]
    dense = sum(m.weight.numel() for m in layers)
    if budget is None:
        budget = math.floor((1 - sparsity) * dense)
    units = [m.weight.shape[0] for m in layers]

    def keep(r):
        return [max(1, round(r * u)) for u in units[:-1]] + [units[-1]]

    if _param_count(model, keep(0.0)) > budget:
        raise VeriSparseError(f"a parameter budget of {budget} cannot hold even one unit per layer "
                              f"({_param_count(model, keep(0.0))} weights); raise it or lower --sparsity")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _param_count(model, keep(mid)) <= budget else (lo, mid)
    counts = keep(lo)
    # Spend what the uniform ratio left over, one unit at a time, on the layers that still fit.
    grew = True
    while grew:
        grew = False
        for k in range(len(units) - 1):
            if counts[k] < units[k]:
                trial = counts[:k] + [counts[k] + 1] + counts[k + 1:]
                if _param_count(model, trial) <= budget:
                    counts, grew = trial, True
    return counts


def unit_norms(m):
    """L2 norm of every output unit's weights (its row or filter)."""
    return m.weight.detach().flatten(1).norm(dim=1)


@torch.no_grad()
def select_units(model, counts, generator=None):
    """Keep counts[k] units per layer: the largest L2 norms, or random ones with a generator."""
    for (_, m), n in zip(prunable(model), counts):
        if generator is not None:
            scores = torch.rand(m.out_mask.shape, generator=generator).to(m.out_mask.device)
        else:
            scores = unit_norms(m)
        _keep_top(m.out_mask, scores, n)


def kept_units(model):
    """Units each prunable layer keeps now."""
    return [int(m.out_mask.sum().item()) for _, m in prunable(model)]


def gradual_structured_counts(model, density: float, final_counts):
    """Units per layer at a weight density on the way to final_counts: the structured budget
    of that density, never below the final count (the greedy fill of a denser budget can give
    some layer fewer units than a sparser one, and a layer must never have to grow back)."""
    return [max(f, n) for f, n in zip(final_counts, structured_counts(model, 1 - density))]


@torch.no_grad()
def thin_structured(model, target_counts, final_counts):
    """Gradual structured pruning: each layer keeps its largest-L2-norm kept units (the measure
    re-masking uses), as many as target_counts allow (never more than it has, never fewer than
    its final count, so the window ends at exactly final_counts). Dropped units keep their
    weights, so a later re-mask can revive them. Returns the number of units removed."""
    removed = 0
    for (_, m), n, floor in zip(prunable(model), target_counts, final_counts):
        kept = m.out_mask.bool()
        have = int(kept.sum().item())
        n = max(floor, min(n, have))
        if n == have:
            continue
        # norms are >= 0, so a kept unit at zero norm still outranks the dropped ones
        _keep_top(m.out_mask, torch.where(kept, unit_norms(m), torch.full_like(m.out_mask, -1.0)), n)
        removed += have - n
    return removed
