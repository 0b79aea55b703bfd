"""Compacted structured training: a structured mask's kept units as a small dense network.

A structured mask zeroes whole neurons and filters, yet the masked model still computes
them. Here each prunable layer's kept units (out_mask) and the inputs they read (the
previous layer's kept units; through a Flatten, each kept channel's H*W features) are
gathered into plain nn.Linear / nn.Conv2d layers, so forward, backward and the certified
bounds run at the sub-network's size. The full masked model stays the record: weights and
optimizer state go back to it (scatter) before every evaluation, checkpoint and re-masking,
so checkpoints, export, verify and resume keep the masked format.

The compact network computes the masked one exactly up to float summation order: a pruned
unit's output is exactly 0 (its weights and bias are masked), so it adds nothing to the next
layer, and its interval bounds are [0, 0]. In masked training the pruned weights get exactly
zero gradients, but Adam's momentum still moves them; while units can come back, scatter
replays those zero-gradient optimizer steps on the full model, so a revived unit resumes the
weights masked training would give it (and re-selection by L2 norm sees the same norms).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import skip_init

from verisparse.errors import VeriSparseError
from verisparse.verify.from_torch import bounded_net

from .layers import MaskedConv2d, MaskedLinear, Normalize
from .models import prunable


class _Slot:
    """One full parameter and its compact copy: the copy is full[rows][:, cols]
    (None: the whole axis)."""

    def __init__(self, full, rows, cols):
        self.full, self.rows, self.cols = full, rows, cols

    def take(self, t):
        if self.rows is not None:
            t = t.index_select(0, self.rows)
        if self.cols is not None:
            t = t.index_select(1, self.cols)
        return t.clone()

    def put(self, t, value):
        rows = self.rows if self.rows is not None else torch.arange(t.shape[0], device=t.device)
        if self.cols is None:
            t.index_copy_(0, rows, value)
        else:
            t[rows.unsqueeze(1), self.cols.unsqueeze(0)] = value


def _inputs_read(prev_units, n_in, n_prev):
    """Input indices of a layer that read the kept units of the layer before: a flattened
    conv feeds n_in / n_prev consecutive features per channel (channel-major, as Flatten)."""
    per = n_in // n_prev
    return (prev_units.unsqueeze(1) * per + torch.arange(per, device=prev_units.device)).flatten()


def _gather(model: nn.Sequential):
    """(compact nn.Sequential, [(_Slot, compact parameter)] in model.parameters() order)."""
    layers, slots = [], []
    last = prunable(model)[-1][1]
    prev_units = prev_count = None
    for m in model:
        if isinstance(m, (MaskedLinear, MaskedConv2d)):
            if not bool((m.weight_mask == 1).all()):
                raise VeriSparseError("compacted training needs a purely structured mask (whole units only)")
            if m is last:
                if not bool((m.out_mask == 1).all()):
                    raise VeriSparseError("compacted training keeps every output of the last layer")
                rows = None
            else:
                rows = m.out_mask.nonzero().squeeze(1)
            cols = None if prev_units is None else _inputs_read(prev_units, m.weight.shape[1], prev_count)
            w_slot = _Slot(m.weight, rows, cols)
            out_n = m.weight.shape[0] if rows is None else len(rows)
            in_n = m.weight.shape[1] if cols is None else len(cols)
            # skip_init: the weights are copied in next, and init would draw from the global RNG
            if isinstance(m, MaskedConv2d):
                small = skip_init(nn.Conv2d, in_n, out_n, m.kernel_size, m.stride, m.padding,
                                  bias=m.bias is not None, device=m.weight.device)
            else:
                small = skip_init(nn.Linear, in_n, out_n, bias=m.bias is not None, device=m.weight.device)
            with torch.no_grad():
                small.weight.copy_(w_slot.take(m.weight))
                slots.append((w_slot, small.weight))
                if m.bias is not None:
                    b_slot = _Slot(m.bias, rows, None)
                    small.bias.copy_(b_slot.take(m.bias))
                    slots.append((b_slot, small.bias))
            layers.append(small)
            prev_units = rows if rows is not None else torch.arange(out_n, device=m.weight.device)
            prev_count = m.weight.shape[0]
        elif isinstance(m, (nn.ReLU, nn.Flatten, Normalize)):
            layers.append(m)  # stateless or buffers only: shared with the full model
        else:
            raise VeriSparseError(f"compacted training does not support layer {type(m).__name__} "
                                  "(structured sparsity works with Linear, Conv2d, ReLU, Flatten, Normalize)")
    if sum(1 for _ in model.parameters()) != len(slots):
        raise VeriSparseError("compacted training supports models whose only parameters are its masked layers")
    return nn.Sequential(*layers).train(model.training), slots


class Compacted:
    """The kept sub-network of a structured-masked model with its own optimizer.

    model / net / opt: what a training step uses (a plain nn.Sequential, its BoundedNet,
    built once since the layers' parameters are updated in place, and an optimizer of the
    full one's class and settings holding the gathered state). scatter() writes weights and
    optimizer state back into the full model and its optimizer."""

    def __init__(self, model: nn.Sequential, opt: torch.optim.Optimizer, in_shape):
        if len(opt.param_groups) != 1:
            raise VeriSparseError("compacted training needs an optimizer with one parameter group")
        self.full_model, self.full_opt = model, opt
        self.masks = [m.out_mask.clone() for _, m in prunable(model)]
        self.model, self._slots = _gather(model)
        self.net = bounded_net(self.model, in_shape)
        settings = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        self.opt = type(opt)(self.model.parameters(), lr=settings["lr"])
        self.opt.param_groups[0].update(settings)
        for slot, small in self._slots:
            state = opt.state.get(slot.full)
            if state:
                self.opt.state[small] = {k: slot.take(v) if _shaped_like(v, slot.full) else v.clone()
                                         for k, v in state.items()}
        self._lrs = []  # the lr of every compact step since the last scatter
        self.opt.register_step_post_hook(lambda o, args, kwargs: self._lrs.append(o.param_groups[0]["lr"]))

    def matches(self, model) -> bool:
        """Whether the model's masks are still the ones this sub-network was gathered for."""
        return all(torch.equal(a, m.out_mask) for a, (_, m) in zip(self.masks, prunable(model)))

    @torch.no_grad()
    def scatter(self, replay_pruned: bool):
        """Write the sub-network's weights and optimizer state into the full model.
        replay_pruned: first step the full optimizer with zero gradients once per compact step
        (at that step's lr), as masked training moves pruned weights; needed only while
        pruned units can come back, since the others are never read again."""
        full_params = [slot.full for slot, _ in self._slots]
        if replay_pruned and self._lrs:
            for p in full_params:
                p.grad = torch.zeros_like(p)
            for lr in self._lrs:
                self.full_opt.param_groups[0]["lr"] = lr
                self.full_opt.step()
            for p in full_params:
                p.grad = None
        for slot, small in self._slots:
            slot.put(slot.full, small)
            state = self.opt.state.get(small)
            if not state:
                continue
            full_state = self.full_opt.state[slot.full]
            for k, v in state.items():
                if _shaped_like(v, small):
                    if k not in full_state:
                        full_state[k] = torch.zeros_like(slot.full)
                    slot.put(full_state[k], v)
                else:
                    full_state[k] = v.clone()
        self.full_opt.param_groups[0]["lr"] = self.opt.param_groups[0]["lr"]
        self._lrs = []


def _shaped_like(v, p):
    return torch.is_tensor(v) and v.shape == p.shape and v.dim() > 0


def compactable(model: nn.Sequential) -> bool:
    """A structured mask that removes some unit and nothing else (no single-weight mask)."""
    layers = [m for _, m in prunable(model)]
    return (any(bool((m.out_mask == 0).any()) for m in layers[:-1])
            and all(bool((m.weight_mask == 1).all()) for m in layers))


def set_step_threads(comp, device) -> int:
    """One intra-op thread for compacted steps and evaluation on CPU; returns the count to
    restore after.
    The sub-network's ops take well under a millisecond, so a second OpenMP thread only adds
    synchronisation, and on a shared, busy machine waiting for it made an epoch over 20x
    slower (mnist5k cnn_4layer at 0.95: over 90 s against 3-5 s with one thread)."""
    threads = torch.get_num_threads()
    if comp is not None and device.type == "cpu":
        torch.set_num_threads(1)
    return threads
