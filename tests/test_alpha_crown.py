"""alpha-CROWN: never looser than CROWN, never past the exact minimum (brute force on tiny
networks, sampling on convolutional ones), strictly tighter somewhere, and a stage of the
verifier whose certificates re-check."""
import json

import pytest
import torch
from click.testing import CliRunner

from netgen import random_net, random_problem
from test_verify_soundness import _brute_force_min, _tiny
from verisparse.cli import main
from verisparse.verify.alpha_crown import alpha_crown
from verisparse.verify.bounds import input_box, margin_spec
from verisparse.verify.from_torch import bounded_net
from verisparse.verify.rounding import SoundBounds, sound_box

pytestmark = pytest.mark.usefixtures("one_thread")


def test_between_crown_and_the_exact_minimum_on_tiny_networks():
    gen = torch.Generator().manual_seed(21)
    gains = checked = 0
    for trial in range(30):
        n_in = 2 + trial % 2
        model = _tiny(gen, n_in, [3, 3] if trial % 2 else [5])
        net = bounded_net(model, (n_in,))
        x = torch.rand(1, n_in, generator=gen)
        x_l, x_u = input_box(x, 0.3)
        C = margin_spec(torch.tensor([0]), 3)
        with torch.no_grad():
            crown = net.crown(x_l, x_u, C)
        alpha = alpha_crown(net, x_l, x_u, C, iterations=60)
        for j in (1, 2):
            exact = _brute_force_min(model, x_l[0].double().numpy(), x_u[0].double().numpy(),
                                     C[0, j].double().numpy())
            assert float(crown[0, j]) - 1e-6 <= float(alpha[0, j]) <= exact + 1e-5, (trial, j)
            gains += float(alpha[0, j]) > float(crown[0, j]) + 1e-4
            checked += 1
    assert checked == 60
    assert gains >= 5  # the optimisation does something (7 of 60 margins at this seed)


def test_never_looser_than_crown_and_below_every_sampled_margin_on_cnns():
    gen = torch.Generator().manual_seed(4)
    gains = 0
    for _ in range(10):
        model, shape = random_net("cnn", gen)
        net = bounded_net(model, shape)
        x = torch.rand(3, *shape, generator=gen)
        y = torch.tensor([0, 1, 2])
        x_l, x_u = input_box(x, 0.1)
        C = margin_spec(y, 4)
        with torch.no_grad():
            crown = net.crown(x_l, x_u, C)
        alpha = alpha_crown(net, x_l, x_u, C)
        pts = x_l.unsqueeze(1) + (x_u - x_l).unsqueeze(1) * torch.rand(3, 1000, *shape, generator=gen)
        with torch.no_grad():
            z = model(pts.flatten(0, 1)).view(3, 1000, -1)
        sampled = torch.einsum("bsk,bnk->bns", C, z).min(1).values
        assert (alpha >= crown - 1e-5).all()
        assert (alpha <= sampled + 1e-5).all()
        gains += int((alpha > crown + 1e-4).sum())
    assert gains > 0


def test_sound_stage_keeps_the_rounding_charge():
    """Through SoundBounds the optimised bound is still below the exact minimum, and no looser
    than the sound CROWN bound it starts from."""
    gen = torch.Generator().manual_seed(9)
    for trial in range(10):
        model = _tiny(gen, 2, [3, 3])
        net = bounded_net(model, (2,))
        x = torch.rand(1, 2, generator=gen)
        y = torch.tensor([0])
        x_l, x_u = sound_box(x, 0.3)
        C = margin_spec(y, 3).double()
        sound = SoundBounds(net, (2,))
        lb_crown = torch.full((1, 3), -torch.inf, dtype=torch.float64)
        lb_alpha = lb_crown.clone()
        todo = torch.tensor([True])
        sound.tighten(x_l, x_u, C, y, lb_crown, todo, [(torch.float32, "crown")])
        sound.tighten(x_l, x_u, C, y, lb_alpha, todo, [(torch.float32, "alpha-crown")])
        for j in (1, 2):
            exact = _brute_force_min(model, x_l[0].numpy(), x_u[0].numpy(), C[0, j].numpy())
            assert float(lb_crown[0, j]) - 1e-6 <= float(lb_alpha[0, j]) <= exact


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_export):
    return digits_export(tmp_path_factory.mktemp("alpha") / "run", "mlp_2layer", eps=0.05, epochs=3)


@pytest.mark.parametrize("method", ["alpha-crown", "bab"])
def test_cli_method_certificate_rechecks(digits_run, method):
    run = digits_run
    r = CliRunner().invoke(main, ["verify", str(run / "model.onnx"), "--n", "40", "--method", method,
                                  "--eps", "0.05", "--time-limit", "2"])
    assert r.exit_code == 0, r.output
    cert = json.loads((run / "certificate.json").read_text())
    assert cert["method"] == method
    stages = {s["decided_by"] for s in cert["samples"] if s["status"] == "verified"}
    assert stages <= {"ibp", "crown", "alpha-crown", "bab"}
    r = CliRunner().invoke(main, ["verify", "--check", str(run / "certificate.json")])
    assert r.exit_code == 0, r.output
    # a claim forged up to this stage on a method that stops at crown is refused
    cert["method"] = cert["method_resolved"] = "crown"
    for s in cert["samples"]:
        if s["status"] == "verified":
            s["decided_by"] = method
            break
    (run / "forged.json").write_text(json.dumps(cert))
    r = CliRunner().invoke(main, ["verify", "--check", str(run / "forged.json")])
    assert r.exit_code == 1 and "does not run" in r.output, r.output


def _sampled_pre(model, pts):
    """Every ReLU's input at the points, in order (the bound IR keeps the ReLUs of the model)."""
    out, z = [], pts
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.ReLU):
                out.append(z.flatten(1))
            z = m(z)
    return out, z


def test_intermediate_bounds_hold_at_every_sampled_point_and_tighten_the_output():
    """Optimised intermediate bounds contain every sampled pre-activation and sit inside CROWN's;
    the output bound stays below every sampled margin, and beats output-only alpha-CROWN on the
    whole (it can only fail if the intermediate slopes do nothing)."""
    from verisparse.verify.alpha_crown import optimise
    from verisparse.verify.ops import ReLU
    gen = torch.Generator().manual_seed(15)
    gain = narrower = 0.0
    for trial in range(12):
        model, shape, net, x_l, x_u, C = random_problem("cnn" if trial % 2 else "mlp", gen)
        with torch.no_grad():
            crown_pre = net.output_problem(x_l, x_u, C, "crown")[3].pre
        old = optimise(net, x_l, x_u, C, intermediate=0)
        new = optimise(net, x_l, x_u, C)
        pts = x_l.unsqueeze(1) + (x_u - x_l).unsqueeze(1) * torch.rand(2, 2000, *shape, generator=gen)
        pre, z = _sampled_pre(model, pts.flatten(0, 1))
        relus = sorted(i for i in new.pre if isinstance(net.ops[i], ReLU))
        for i, p in zip(relus, pre):
            l, u = (t.flatten(1).repeat_interleave(2000, 0) for t in new.pre[i])
            assert (p >= l - 1e-5).all() and (p <= u + 1e-5).all(), (trial, i)
            cl, cu = crown_pre[i]
            assert (new.pre[i][0] >= cl - 1e-6).all() and (new.pre[i][1] <= cu + 1e-6).all()
            narrower += float(((cu - cl) - (new.pre[i][1] - new.pre[i][0])).sum())
        sampled = torch.einsum("bsk,bnk->bns", C, z.view(2, 2000, -1)).min(1).values
        assert (new.lower <= sampled + 1e-5).all()
        gain += float((new.lower - old.lower).sum())
    assert narrower > 0 and gain > 0
