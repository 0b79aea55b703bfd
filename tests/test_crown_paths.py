"""Full CROWN's fast paths (windows, sparse conv adjoints, skipped zero spec rows, lower and
upper in one pass) give the bounds of plain textbook CROWN, kept here as the reference."""
import pytest
import torch
import torch.nn.functional as F

from netgen import random_net
from verisparse.trainer.models import build_model
from verisparse.verify import ops as vops
from verisparse.verify import windows
from verisparse.verify.bounds import input_box, margin_spec
from verisparse.verify.from_torch import bounded_net
from verisparse.verify.rounding import sound_net


def _adjoint(op, A):
    """op's backward rule written out on whole maps (conv_transpose2d, no sparse matrices)."""
    if isinstance(op, vops.Conv2d):
        B, S = A.shape[:2]
        flat = A.reshape(B * S, *A.shape[2:])
        A_in = vops._conv_transpose(flat, op.weight, op.stride, op.padding, op.in_shape)
        const = (A * op.bias.view(-1, 1, 1)).flatten(2).sum(-1) if op.bias is not None else A.new_zeros(B, S)
        return A_in.reshape(B, S, *op.in_shape), const
    return op.backward(A)


def _reference_backward(net, A, end, pre, lower):
    const = A.new_zeros(A.shape[:2])
    for i in reversed(range(end)):
        op = net.ops[i]
        if isinstance(op, vops.ReLU):
            l, u = (t.unsqueeze(1) for t in pre[i])
            unstable = (l < 0) & (u > 0)
            up_s = torch.where(unstable, u / torch.where(unstable, u - l, torch.ones_like(u)), (l >= 0).to(u))
            up_c = torch.where(unstable, -l * up_s, torch.zeros_like(u))
            lo_s = torch.where(unstable, (u >= -l).to(u), (l >= 0).to(u))
            take_lo = (A > 0) if lower else (A < 0)
            const = const + (A * torch.where(take_lo, torch.zeros_like(up_c), up_c)).flatten(2).sum(-1)
            A = A * torch.where(take_lo, lo_s, up_s)
        else:
            A, c = _adjoint(op, A)
            const = const + c
    return A, const


def _concretize(A, const, x_l, x_u, lower):
    mid, rad = ((x_u + x_l) / 2).unsqueeze(1), ((x_u - x_l) / 2).unsqueeze(1)
    spread = (A.abs() * rad).flatten(2).sum(-1)
    return const + (A * mid).flatten(2).sum(-1) + (-spread if lower else spread)


def reference_crown(net, x_l, x_u, C):
    """CROWN with CROWN bounds on every unstable ReLU input (stable ones have exact lines
    whatever their bounds), whole maps, one sample at a time: (lower, upper) on C·f(x)."""
    pre, l, u = {}, x_l, x_u
    for i, op in enumerate(net.ops):
        if isinstance(op, vops.ReLU):
            if pre:  # the first ReLU's input is one affine map of the box: IBP's bounds are exact
                l, u = l.clone(), u.clone()
                for b in range(len(l)):
                    idx = ((l[b] < 0) & (u[b] > 0)).flatten().nonzero().squeeze(1)
                    eye = torch.eye(l[b].numel(), dtype=l.dtype)[idx].view(1, len(idx), *l.shape[1:])
                    mine = {k: (lo[b:b + 1], hi[b:b + 1]) for k, (lo, hi) in pre.items()}
                    lo = _concretize(*_reference_backward(net, eye, i, mine, True), x_l[b:b + 1], x_u[b:b + 1], True)
                    hi = _concretize(*_reference_backward(net, eye, i, mine, False), x_l[b:b + 1], x_u[b:b + 1], False)
                    l[b].view(-1)[idx] = torch.maximum(l[b].view(-1)[idx], lo[0])
                    u[b].view(-1)[idx] = torch.minimum(u[b].view(-1)[idx], hi[0])
            pre[i] = (l, u)
        l, u = op.ibp(l, u)
    last = net.ops[-1]
    W, b = C @ last.weight, C @ last.bias
    end = len(net.ops) - 1
    return (_concretize(*_reference_backward(net, W, end, pre, True), x_l, x_u, True) + b,
            _concretize(*_reference_backward(net, W, end, pre, False), x_l, x_u, False) + b)


def _cases():
    gen = torch.Generator().manual_seed(0)
    for seed in range(6):
        model, shape = random_net("cnn" if seed % 3 else "mlp", gen)
        yield f"random{seed}", model, shape, 0.1
    torch.manual_seed(1)
    for arch, shape, eps in (("cnn_4layer", (1, 28, 28), 0.02), ("cnn_4layer", (3, 16, 16), 0.01)):
        yield arch, build_model(arch, shape, 10).eval(), shape, eps


@pytest.mark.parametrize("name, model, shape, eps", list(_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_fast_crown_equals_the_textbook_reference(name, model, shape, eps):
    gen = torch.Generator().manual_seed(3)
    net = bounded_net(model, shape)
    x = torch.rand(3, *shape, generator=gen)
    y = torch.randint(0, 4, (3,), generator=gen)
    K = model(x).shape[1]
    x_l, x_u = input_box(x, eps)
    C = margin_spec(y, K)
    with torch.no_grad():
        fast = net.crown(x_l, x_u, C, upper=True)
        ref = reference_crown(net, x_l, x_u, C)
    for f, r in zip(fast, ref):
        scale = max(1.0, float(r.abs().max()))
        assert torch.allclose(f, r, atol=1e-5 * scale, rtol=0), (name, float((f - r).abs().max()))
    # the reference is worth comparing with: some neurons are unstable, bounds not trivial
    assert (fast[0] < fast[1] - 1e-6).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sound_bounds_unchanged_by_windows_and_sparse_adjoints(monkeypatch, dtype):
    """With rounding error intervals (verify.rounding), the window and sparse-matrix paths
    give what whole-map conv_transpose2d gives, to the order of float additions."""
    torch.manual_seed(2)
    shape = (1, 28, 28)
    model = build_model("cnn_4layer", shape, 10).eval()
    with torch.no_grad():  # sparse weights, as the verifier sees them on a trained run
        for p in model.parameters():
            p.mul_(torch.rand(p.shape) > 0.7)
    net = sound_net(bounded_net(model, shape), shape, dtype)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(3, *shape, generator=gen, dtype=dtype)
    x_l, x_u = input_box(x, 0.03)
    C = margin_spec(torch.arange(3), 10).to(dtype)
    used = []
    real = windows.backward_windows
    monkeypatch.setattr("verisparse.verify.bounds.backward_windows", lambda *a: used.append(1) or real(*a))
    with torch.no_grad():
        fast = net.crown(x_l, x_u, C, upper=True)
        monkeypatch.setattr(vops, "MAX_SPARSE_ADJOINT", 0)
        monkeypatch.setattr(windows, "MAX_WINDOW_FRACTION", 0.0)
        for op in net.ops:
            op.__dict__.pop("_sparse_adjoints", None)
        plain = net.crown(x_l, x_u, C, upper=True)
    assert used, "the window path did not run"
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for f, p in zip(fast, plain):
        assert torch.allclose(f, p, atol=tol * max(1.0, float(p.abs().max())), rtol=0)


def test_window_gather_pads_with_zeros():
    T = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = windows.gather(T, torch.tensor([1, 0]), torch.tensor([-1, 2]), torch.tensor([3, -2]), 3, 3)
    padded = F.pad(T, (3, 3, 3, 3))
    assert torch.equal(out[0], padded[1, :, 2:5, 6:9])
    assert torch.equal(out[1], padded[0, :, 5:8, 1:4])


def test_sparse_adjoint_matches_conv_transpose():
    torch.manual_seed(5)
    w = torch.randn(5, 3, 3, 3) * (torch.rand(5, 3, 3, 3) > 0.5)
    op = vops.Conv2d(w, torch.randn(5), (2, 1), (1, 0), (3, 9, 8))
    A = torch.randn(4, 2, 5, 5, 6)
    with torch.no_grad():
        fast, c_fast = op.backward(A)
    assert op.__dict__.get("_sparse_adjoints"), "the sparse path did not run"
    ref, c_ref = _adjoint(op, A)
    assert torch.allclose(fast, ref, atol=1e-5) and torch.allclose(c_fast, c_ref, atol=1e-5)


def test_cpu_chunks_give_each_sample_its_own_bounds(monkeypatch):
    """Full CROWN in chunks of samples (the CPU path) equals one pass over the whole batch:
    lower, upper and the IBP bound, sample for sample."""
    from verisparse.verify import bounds as vbounds
    torch.manual_seed(3)
    shape = (1, 28, 28)
    model = build_model("cnn_4layer", shape, 10).eval()
    net = sound_net(bounded_net(model, shape), shape, torch.float32)
    x = torch.rand(7, *shape, generator=torch.Generator().manual_seed(1))
    x_l, x_u = input_box(x, 0.02)
    C = margin_spec(torch.arange(7) % 10, 10)
    passes = []
    real = vbounds.BoundedNet.output_problem
    monkeypatch.setattr(vbounds.BoundedNet, "output_problem", lambda self, x_l, *a: passes.append(len(x_l)) or
                        real(self, x_l, *a))
    with torch.no_grad():
        monkeypatch.setattr(vbounds, "CPU_CROWN_CHUNK", 3)
        chunked = net.crown(x_l, x_u, C, upper=True, with_ibp=True)
        assert passes == [3, 3, 1]
        lower = net.crown(x_l, x_u, C)
        monkeypatch.setattr(vbounds, "CPU_CROWN_CHUNK", 100)
        whole = net.crown(x_l, x_u, C, upper=True, with_ibp=True)
    assert len(chunked) == 3 and chunked[0].shape == (7, 10)
    for c, w in zip(chunked, whole):
        assert torch.allclose(c, w, atol=1e-5 * max(1.0, float(w.abs().max())), rtol=0)
    assert torch.equal(lower, chunked[0])
    assert (whole[0] < whole[1] - 1e-6).any()  # bounds not trivial
