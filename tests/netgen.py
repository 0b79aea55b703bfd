"""Random small networks and points for soundness tests."""
import torch
from torch import nn

from verisparse.trainer.layers import MaskedConv2d, MaskedLinear, Normalize


def random_net(kind: str, gen: torch.Generator, classes=4):
    """kind: 'mlp', 'cnn' or 'linear'; returns (eval-mode model, input shape)."""
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    if kind == "linear":
        return nn.Sequential(nn.Flatten(), MaskedLinear(4, 6), MaskedLinear(6, classes)).eval(), (4,)
    if kind == "mlp":
        w = int(torch.randint(3, 12, (1,), generator=gen))
        return nn.Sequential(nn.Flatten(), MaskedLinear(5, w), nn.ReLU(), MaskedLinear(w, w), nn.ReLU(),
                             MaskedLinear(w, classes)).eval(), (5,)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():  # non-trivial running statistics and a negative scale somewhere
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    net = nn.Sequential(Normalize([0.4, 0.5], [0.3, 0.2]), MaskedConv2d(2, 3, 3, 1, 1), bn, nn.ReLU(),
                        MaskedConv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.AvgPool2d(2, 1), nn.Flatten(),
                        MaskedLinear(4 * 2 * 2, 8), nn.ReLU(), MaskedLinear(8, classes))
    return net.eval(), (2, 5, 5)


def random_problem(kind: str, gen: torch.Generator, eps=0.15):
    """A random net and two random points' eps-boxes with labels 0 and 1:
    (model, shape, bounded net, x_l, x_u, margin spec C)."""
    from verisparse.verify.bounds import input_box, margin_spec
    from verisparse.verify.from_torch import bounded_net
    model, shape = random_net(kind, gen)
    net = bounded_net(model, shape)
    x = torch.rand(2, *shape, generator=gen)
    x_l, x_u = input_box(x, eps)
    return model, shape, net, x_l, x_u, margin_spec(torch.tensor([0, 1]), 4)
