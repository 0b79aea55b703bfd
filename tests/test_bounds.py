"""Soundness of the bound core on many random small networks."""
import itertools

import pytest
import torch

from netgen import random_net
from verisparse.verify.bounds import input_box, margin_spec, verified
from verisparse.verify.from_torch import bounded_net

KINDS = ["mlp", "cnn", "linear"]


def _problem(kind, gen, batch, eps):
    """A random network and a batch of boxes: (model, shape, net, x, y, x_l, x_u, C)."""
    model, shape = random_net(kind, gen)
    x = torch.rand(batch, *shape, generator=gen)
    y = torch.randint(0, 4, (batch,), generator=gen)
    return model, shape, bounded_net(model, shape), x, y, *input_box(x, eps), margin_spec(y, 4)


def _sampled_margins(model, x_l, x_u, C, n, gen):
    B = x_l.shape[0]
    u = torch.rand(B, n, *x_l.shape[1:], generator=gen)
    u[:, : n // 4] = u[:, : n // 4].round()  # box vertices, where linear pieces peak
    pts = x_l.unsqueeze(1) + (x_u - x_l).unsqueeze(1) * u
    with torch.no_grad():
        out = model(pts.flatten(0, 1)).view(B, n, -1)
    return torch.einsum("bsk,bnk->bns", C, out)


@pytest.mark.parametrize("seed", range(70))
def test_bounds_contain_every_sampled_margin(seed):
    gen = torch.Generator().manual_seed(seed)
    model, shape = random_net(KINDS[seed % 3], gen)
    net = bounded_net(model, shape)
    B, eps = 5, float(torch.empty(1).uniform_(0.01, 0.3, generator=gen))
    x = torch.rand(B, *shape, generator=gen)
    y = torch.randint(0, 4, (B,), generator=gen)
    x_l, x_u = input_box(x, eps)
    C = margin_spec(y, 4)
    margins = _sampled_margins(model, x_l, x_u, C, 1500, gen)
    assert torch.allclose(net.forward(x), model(x), atol=1e-6)
    bounds = {"ibp": net.ibp(x_l, x_u, C),
              "crown": net.crown(x_l, x_u, C, intermediate="crown", upper=True),
              "crown-ibp": net.crown(x_l, x_u, C, intermediate="ibp", upper=True)}
    for name, (lo, hi) in bounds.items():
        assert (lo.unsqueeze(1) <= margins + 1e-5).all(), name
        assert (margins <= hi.unsqueeze(1) + 1e-5).all(), name
        assert (lo <= hi + 1e-6).all(), name


def test_linear_net_bounds_are_exact():
    """On a purely linear network the extreme margins sit on box vertices: CROWN finds them."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        model, shape, net, x, y, x_l, x_u, C = _problem("linear", gen, 3, 0.2)
        vertices = torch.tensor(list(itertools.product([0.0, 1.0], repeat=shape[0])))
        pts = x_l.unsqueeze(1) + (x_u - x_l).unsqueeze(1) * vertices
        with torch.no_grad():
            m = torch.einsum("bsk,bnk->bns", C, model(pts.flatten(0, 1)).view(3, len(vertices), -1))
        lo, hi = net.crown(x_l, x_u, C, upper=True)
        assert torch.allclose(lo, m.min(1).values, atol=1e-5)
        assert torch.allclose(hi, m.max(1).values, atol=1e-5)


def test_crown_no_looser_than_ibp_when_every_neuron_is_stable():
    """With every ReLU stable CROWN is the exact linear map, concretised jointly: it can only
    be tighter than IBP's layer-by-layer intervals."""
    gen = torch.Generator().manual_seed(2)
    checked = 0
    for _ in range(40):
        model, shape, net, x, y, x_l, x_u, C = _problem("mlp", gen, 4, 1e-3)
        pre = net._ibp_layers(x_l, x_u, net.ops).pre
        if any(((l < 0) & (u > 0)).any() for l, u in pre.values()):
            continue
        li, ui = net.ibp(x_l, x_u, C)
        lc, uc = net.crown(x_l, x_u, C, upper=True)
        assert (lc >= li - 1e-6).all() and (uc <= ui + 1e-6).all()
        checked += 1
    assert checked >= 10


def test_crown_tightens_a_conv_net():
    gen = torch.Generator().manual_seed(3)
    model, shape, net, x, y, x_l, x_u, C = _problem("cnn", gen, 8, 0.05)
    li, ui = net.ibp(x_l, x_u, C)
    lc, uc = net.crown(x_l, x_u, C, upper=True)
    assert (uc - lc).mean() < 0.5 * (ui - li).mean()


def test_margin_spec_and_verified():
    y = torch.tensor([0, 2])
    C = margin_spec(y, 3)
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 5.0, 4.0]])
    m = torch.einsum("bsk,bk->bs", C, logits)
    assert m.tolist() == [[0.0, 2.0, 3.0], [4.0, -1.0, 0.0]]
    assert verified(m, y).tolist() == [True, False]


def test_bounds_are_differentiable():
    gen = torch.Generator().manual_seed(4)
    model, shape = random_net("cnn", gen)
    model.train()
    net = bounded_net(model, shape)
    x = torch.rand(6, *shape, generator=gen)
    y = torch.randint(0, 4, (6,), generator=gen)
    net.forward(x)  # training-mode BatchNorm takes the batch statistics here
    lb = net.crown(*input_box(x, 0.05), margin_spec(y, 4), intermediate="ibp")
    lb.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
