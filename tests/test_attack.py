import torch

from netgen import random_net
from verisparse.verify.attack import pgd
from verisparse.verify.bounds import input_box, margin_spec, verified
from verisparse.verify.from_torch import bounded_net


def test_pgd_counterexamples_are_real_and_inside_the_ball():
    gen = torch.Generator().manual_seed(0)
    found = 0
    for _ in range(20):
        model, shape = random_net("cnn", gen)
        x = torch.rand(16, *shape, generator=gen)
        with torch.no_grad():
            y = model(x).argmax(1)
        adv, broken = pgd(model, x, y, 0.2, generator=gen)
        assert ((adv - x).abs() <= 0.2 + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1
        with torch.no_grad():
            assert (model(adv).argmax(1)[broken] != y[broken]).all()
        found += int(broken.sum())
        # soundness: nothing PGD breaks is verified by any bound
        net = bounded_net(model, shape)
        x_l, x_u = input_box(x, 0.2)
        C = margin_spec(y, 4)
        lb = torch.maximum(net.ibp(x_l, x_u, C)[0], net.crown(x_l, x_u, C))
        assert not (verified(lb, y) & broken).any()
    assert found > 0


def test_pgd_breaks_a_linear_classifier_where_it_can():
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        lin.bias.zero_()
    x = torch.tensor([[0.55, 0.45], [0.9, 0.1]])
    y = torch.tensor([0, 0])
    _, broken = pgd(lin, x, y, 0.1)
    assert broken.tolist() == [True, False]
