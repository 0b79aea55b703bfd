"""Branch and bound: never proves a row that brute force breaks, proves the rows that hold on
tiny networks, and its counterexamples are real points of the box."""
import pytest
import torch

from test_verify_soundness import _brute_force_min, _tiny
from verisparse.verify.bab import prove_row
from verisparse.verify.bounds import margin_spec
from verisparse.verify.from_torch import bounded_net
from verisparse.verify.rounding import outward, sound_box, sound_net

pytestmark = pytest.mark.usefixtures("one_thread")


def _cases(seed, n, widths, eps):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        model = _tiny(gen, 2, widths)
        net = sound_net(bounded_net(model, (2,)), (2,), torch.float32)
        x = torch.rand(1, 2, generator=gen)
        x_l, x_u = sound_box(x, eps)
        for j in (1, 2):
            c = margin_spec(torch.tensor([0]), 3)[0, j]
            exact = _brute_force_min(model, x_l[0].numpy(), x_u[0].numpy(), c.double().numpy())
            yield model, net, (x_l, x_u), c, exact


def test_sound_and_complete_on_tiny_networks():
    proved = holds = 0
    for model, net, (x_l, x_u), c, exact in _cases(1, 30, [4, 4], 0.2):
        lo, hi = outward(x_l, x_u, torch.float32)
        out = prove_row(net, lo, hi, c.float(), 5.0)
        assert not (out.proved and exact <= 0), exact
        assert out.lower <= exact + 1e-6  # the reported bound is a bound
        holds += exact > 1e-4
        proved += out.proved
    assert holds >= 20 and proved == holds  # every row that holds by a margin is proved (27 of 60 hold)


def test_counterexamples_are_in_the_box_and_break_the_row():
    found = 0
    for model, net, (x_l, x_u), c, exact in _cases(2, 30, [4, 4], 0.3):
        lo, hi = outward(x_l, x_u, torch.float32)

        def breaks(x):
            with torch.no_grad():
                return float(c @ model(x.float())[0]) < 0

        out = prove_row(net, lo, hi, c.float(), 2.0, breaks)
        if exact > 1e-4:
            assert out.proved
        if out.counterexample is not None:
            x = out.counterexample
            assert (x >= lo).all() and (x <= hi).all() and breaks(x)
            found += 1
        elif exact < -1e-3:
            assert not out.proved
    assert found >= 5


def test_time_limit_leaves_the_row_open():
    gen = torch.Generator().manual_seed(3)
    net = sound_net(bounded_net(_tiny(gen, 2, [12, 12]), (2,)), (2,), torch.float32)
    lo, hi = outward(*sound_box(torch.rand(1, 2, generator=gen), 0.5), torch.float32)
    out = prove_row(net, lo, hi, margin_spec(torch.tensor([0]), 3)[0, 1].float(), 0.0)
    assert not out.proved and "time limit" in out.note


def _split_problem(gen, widths, eps):
    """A tiny sound net, a box, a margin row and random splits on its unstable neurons."""
    from verisparse.verify.bab import _clips, _signs
    from verisparse.verify.ops import ReLU
    model = _tiny(gen, 2, widths)
    net = sound_net(bounded_net(model, (2,)), (2,), torch.float32)
    lo, hi = outward(*sound_box(torch.rand(1, 2, generator=gen), eps), torch.float32)
    c = margin_spec(torch.tensor([0]), 3)[0, 1 + int(torch.randint(0, 2, (1,), generator=gen))].float()
    relus = [i for i, op in enumerate(net.ops) if isinstance(op, ReLU)]
    with torch.no_grad():
        root = net.output_problem(lo, hi, c.view(1, 1, -1), "crown")[3].pre
    split = {}
    for i in relus:
        l, u = root[i]
        for n in ReLU.unstable(l, u)[0].nonzero().squeeze(1).tolist():
            if torch.rand(1, generator=gen) < 0.5:
                lo_i, hi_i = split.get(i, (torch.full_like(l, -torch.inf), torch.full_like(u, torch.inf)))
                (lo_i if torch.rand(1, generator=gen) < 0.5 else hi_i)[0, n] = 0.0
                split[i] = (lo_i, hi_i)
    return net, lo, hi, c, relus, root, split, _clips([split], relus, root), _signs([split], relus, root)


def test_beta_bounds_hold_on_every_point_of_the_subdomain_and_tighten_on_average():
    from verisparse.verify.bab import _alpha_beta
    gen = torch.Generator().manual_seed(7)
    gains, checked = [], 0
    for _ in range(40):
        net, lo, hi, c, relus, root, split, clips, signs = _split_problem(gen, [6, 6], 0.3)
        if not signs:
            continue
        C = c.view(1, 1, -1)
        with torch.no_grad():
            problem = net.output_problem(lo, hi, C, "ibp", clips)
            crown = net.output_bound(*problem[1:3], problem[0], *problem[3:], lo, hi, True)[:, 0]
        if any(bool((l > u).any()) for l, u in problem[3].pre.values()):
            continue  # an empty subdomain: nothing to check
        beta = _alpha_beta(net, problem, lo, hi, signs, crown.clone())
        # points of the box that satisfy every split, found by sampling
        x = lo + (hi - lo) * torch.rand(20000, 2, generator=gen)
        keep = torch.ones(len(x), dtype=torch.bool)
        with torch.no_grad():
            z = x
            for i, op in enumerate(net.ops):
                if i in signs:
                    keep &= ((signs[i] * z) >= 0).all(1)
                z = op.forward(z)
            margin = z[keep] @ c
        if keep.sum() == 0:
            continue
        checked += 1
        assert float(margin.min()) >= float(beta[0]) - 1e-5
        assert float(beta[0]) >= float(crown[0])
        gains.append(float(beta[0] - crown[0]))
    assert checked >= 15
    assert sum(gains) / len(gains) > 1e-3 and sum(g > 1e-4 for g in gains) >= 3


def test_bab_with_beta_never_proves_a_broken_row_on_wider_networks():
    """Wider tiny nets than above (more splits per leaf, so beta does work): every row brute
    force breaks stays unproved, and what is proved holds."""
    for model, net, (x_l, x_u), c, exact in _cases(11, 3, [5, 5], 0.4):
        lo, hi = outward(x_l, x_u, torch.float32)
        out = prove_row(net, lo, hi, c.float(), 2.0)
        assert not (out.proved and exact <= 0), exact
        assert out.lower <= exact + 1e-6


def test_bab_on_random_cnns_never_proves_what_an_attack_or_sampling_breaks():
    """Convolutional nets (optimised intermediate bounds, warm-started slopes, smart branching
    over conv and dense neurons, float64 as the verifier runs it): no proved row has a sampled or
    attacked point below zero, and some rows are proved that CROWN alone leaves open."""
    from netgen import random_net
    from verisparse.verify.attack import pgd
    gen = torch.Generator().manual_seed(5)
    proved_open = proved = 0
    for trial in range(12):
        model, shape = random_net("cnn", gen)
        net = sound_net(bounded_net(model, shape), shape, torch.float64)
        x = torch.rand(1, *shape, generator=gen)
        with torch.no_grad():
            y = model(x).argmax(1)
        eps = 0.15 + 0.1 * (trial % 3)
        x_l, x_u = sound_box(x, eps)
        lo, hi = outward(x_l, x_u, torch.float64)
        C = margin_spec(y, 4).double()
        with torch.no_grad():
            crown = net.crown(lo, hi, C)[0]
        pts = x_l + (x_u - x_l) * torch.rand(4000, *shape, generator=gen, dtype=torch.float64)
        adv, _ = pgd(model, x, y, eps, steps=60, restarts=3, generator=gen)
        with torch.no_grad():
            z = model(torch.cat([pts.float(), adv])).double()
        for j in range(4):
            if j == int(y):
                continue
            out = prove_row(net, lo, hi, C[0, j], 1.0)
            sampled = float((z @ C[0, j]).min())
            assert out.lower <= sampled + 1e-6, (trial, j)
            assert not (out.proved and sampled <= 0), (trial, j)
            proved += out.proved
            proved_open += out.proved and float(crown[j]) <= 0
    assert proved >= 15 and proved_open >= 3
