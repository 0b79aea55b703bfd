"""HYDRA (Sehwag et al., NeurIPS 2020): certified dense pre-training, then pruning by
optimising importance scores under the certified loss with the weights frozen, then
certified fine-tuning of the chosen subnetwork.

The prune phase keeps, per layer, the top-k scores by magnitude: k is the same budget every
other run of the same settings gets (ERK weight counts for unstructured, sparsity.py's
structured_counts units for structured), so HYDRA competes at exactly the same size. The
mask is a hard top-k in the forward pass and passes its gradient straight through to the
scores. Scores start at HYDRA's scaled magnitude, sqrt(6 / fan_in) * |w| / max|w| per layer
(per unit: the unit's L2 norm), so the optimisation starts from prune-finetune's
magnitude mask. Scores are optimised with Adam, as in HYDRA's CROWN-IBP configuration, at
eps_train, with the run's --lr restarted and cosine-decayed over the phase (HYDRA used 1e-5
over about 11,000 steps on SVHN; a default mnist5k run has 800 score steps).

Epoch proportions: HYDRA's CROWN-IBP script pre-trains 200 epochs, prunes 20 and fine-tunes
100, so the defaults are prune_epochs = 10% and finetune_epochs = 50% of --epochs.
"""
from __future__ import annotations

import math

import torch

from verisparse.verify.from_torch import bounded_net

from . import sparsity as sp
from .models import prunable
from .optim import adam


class _TopK(torch.autograd.Function):
    """0/1 mask of the k largest entries; the gradient reaches the scores unchanged."""

    @staticmethod
    def forward(ctx, scores, k):
        return _top_mask(scores, k)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _top_mask(scores, k):
    mask = torch.zeros_like(scores)
    mask.view(-1)[torch.topk(scores.flatten(), k).indices] = 1.0
    return mask


def _unit_view(m):
    return (-1,) + (1,) * (m.weight.dim() - 1)


class Hydra:
    """The prune phase of one run: scores, their optimiser, and the mask hooks train.py calls."""

    def __init__(self, cfg, counts=None):
        """counts: units kept per layer (structured), or None for unstructured ERK weight counts."""
        self.cfg, self.counts = cfg, counts
        self.scores: list[torch.Tensor] | None = None
        self.opt: torch.optim.Adam | None = None

    @property
    def structured(self):
        return self.counts is not None

    def _keep(self, model):
        return self.counts if self.structured else sp.erk_counts(model, self.cfg.sparsity)

    @torch.no_grad()
    def start(self, model):
        """Scaled-magnitude scores from the pre-trained weights, and a fresh Adam for them."""
        self.scores = []
        for _, m in prunable(model):
            fan_in = m.weight[0].numel()
            magnitude = sp.unit_norms(m) if self.structured else m.weight.detach().abs()
            score = math.sqrt(6 / fan_in) * magnitude / magnitude.max().clamp_min(1e-12)
            self.scores.append(score.clone().requires_grad_(True))
        self.opt = adam(self.scores, self.cfg.lr)

    def net(self, model, in_shape):
        """The bounded network with each layer's top-k mask applied to its frozen weights."""
        net = bounded_net(model, in_shape)
        for (i, m), score, k in zip(prunable(model), self.scores, self._keep(model)):
            keep = _TopK.apply(score.abs(), k)
            op, weight = net.ops[i], m.weight.detach()
            if self.structured:
                op.weight = weight * keep.view(_unit_view(m))
                op.bias = None if m.bias is None else m.bias.detach() * keep
            else:
                op.weight = weight * keep
                op.bias = None if m.bias is None else m.bias.detach()
        return net

    @torch.no_grad()
    def write_masks(self, model):
        """Current top-k into the model's weight_mask / out_mask, so evaluation, the
        checkpoint and the exporter see the chosen subnetwork. Weights stay untouched."""
        for (_, m), score, k in zip(prunable(model), self.scores, self._keep(model)):
            target = m.out_mask if self.structured else m.weight_mask
            target.copy_(_top_mask(score.abs(), k))

    def epoch_start(self, model, epoch):
        """Scores begin after pre-training; at fine-tuning the mask becomes final (pruned
        unstructured weights are zeroed, and the training loop keeps them at zero)."""
        cfg = self.cfg
        if epoch == cfg.epochs and self.scores is None:
            self.start(model)
        if epoch == cfg.epochs + cfg.prune_epochs:
            self.write_masks(model)  # with --prune-epochs 0 this is magnitude pruning
            if not self.structured:
                with torch.no_grad():
                    for _, m in prunable(model):
                        m.weight.mul_(m.weight_mask)

    def epoch_end(self, model, epoch):
        if self.cfg.epochs <= epoch < self.cfg.epochs + self.cfg.prune_epochs:
            self.write_masks(model)

    def state_dict(self):
        if self.scores is None:
            return None
        return dict(scores=[s.detach().cpu().clone() for s in self.scores], optimizer=self.opt.state_dict())

    def load_state_dict(self, state, device):
        if state is None:
            return
        self.scores = [s.to(device).requires_grad_(True) for s in state["scores"]]
        self.opt = adam(self.scores, self.cfg.lr)
        self.opt.load_state_dict(state["optimizer"])
