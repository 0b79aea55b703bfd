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
