"""Bounds on a CUDA device agree with the CPU's (run where CUDA exists, skipped elsewhere), and
no bound that is reported or certified is computed in TF32 (runs anywhere: the flags are
observed inside the bound calls)."""
import numpy as np
import pytest
import torch

from conftest import ZOO
from netgen import random_net
from verisparse.trainer.models import build_model
from verisparse.verify.bounds import BoundedNet, margin_spec
from verisparse.verify.float_verify import CROWN_STAGES, IBP_STAGES
from verisparse.verify.from_torch import bounded_net
from verisparse.verify.rounding import SoundBounds, converted, no_tf32, outward, sound_box

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
RTOL = 1e-5
KINDS = ("ibp", "crown-ibp", "crown")


def _nets():
    """(name, eval-mode model, input shape, bound kinds): the zoo, untrained, at digits and
    MNIST size and at CIFAR size for IBP and CROWN-IBP (full CROWN of an untrained cnn_7layer
    takes over 5 minutes on the CPU side: IBP and CROWN-IBP only); and random small networks
    with BatchNorm and pooling."""
    for arch in ZOO:
        small = KINDS[:2] if arch == "cnn_7layer" else KINDS
        for shape, kinds in (((1, 8, 8), small), ((1, 28, 28), small), ((3, 32, 32), KINDS[:2])):
            torch.manual_seed(0)
            model = build_model(arch, shape, 10, batchnorm=arch == "cnn_7layer").eval()
            yield f"{arch}{shape}", model, shape, kinds
    gen = torch.Generator().manual_seed(1)
    for k in range(6):
        model, shape = random_net(("mlp", "cnn", "linear")[k % 3], gen)
        yield f"random-{k}", model, shape, KINDS


def _bounds(net, shape, device, kinds, eps=0.03, batch=4):
    """Margin lower bounds per kind: the bound core's in float32 and the sound ones (float32,
    and float64 for IBP and CROWN), all computed on device, returned on the CPU."""
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(2))
    K = net.forward(x[:1]).shape[1]
    y = torch.arange(batch) % K
    C = margin_spec(y, K).double()
    x_l, x_u = sound_box(x, eps)
    core, sound = converted(net, torch.float32, device), SoundBounds(net, shape, device)
    lo, hi = (v.to(device) for v in outward(x_l, x_u, torch.float32))
    C32 = C.float().to(device)
    stages = dict(ibp=IBP_STAGES, **{"crown-ibp": CROWN_STAGES[:1]}, crown=CROWN_STAGES[1:])
    out = {}
    for kind in kinds:
        with no_tf32():  # the core as the verifier runs it; TF32 alone differs by ~4e-5 relative
            if kind == "ibp":
                out["core-ibp"] = core.ibp(lo, hi, C32)[0]
            else:
                out[f"core-{kind}"] = core.crown(lo, hi, C32, "ibp" if kind == "crown-ibp" else "crown")
        for dtype, stage in stages[kind]:  # each stage on every row, from scratch
            lb = torch.full(C.shape[:2], -torch.inf, dtype=torch.float64)
            sound.tighten(x_l, x_u, C, y, lb, torch.ones(batch, dtype=torch.bool), [(dtype, stage)])
            out[f"sound-{stage}-{dtype}"] = lb
    return {k: v.detach().double().cpu() for k, v in out.items()}


def _compare(name, a, b):
    for k in a:
        finite = torch.isfinite(a[k])
        assert torch.equal(finite, torch.isfinite(b[k])), f"{name} {k}: different infinite entries"
        scale = max(1.0, float(a[k][finite].abs().max())) if finite.any() else 1.0
        diff = float((a[k][finite] - b[k][finite]).abs().max()) if finite.any() else 0.0
        assert diff <= RTOL * scale, f"{name} {k}: CPU and CUDA differ by {diff:.3g} (bounds up to {scale:.3g})"


@needs_cuda
@pytest.mark.parametrize("name,model,shape,kinds", list(_nets()), ids=lambda v: v if isinstance(v, str) else "")
def test_cpu_and_cuda_bounds_agree(name, model, shape, kinds):
    net = bounded_net(model, shape)
    _compare(name, _bounds(net, shape, "cpu", kinds), _bounds(net, shape, "cuda", kinds))


# --- TF32 stays off wherever a bound is reported or certified ------------------------------

@pytest.fixture
def tf32_on(monkeypatch):
    """TF32 switched on globally (as PyTorch does for convolutions on Ampere and later), and
    a record of the flags each bound computation ran under."""
    seen = []

    def spy(fn):
        def wrapped(*a, **k):
            seen.append((fn.__name__, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
            return fn(*a, **k)
        return wrapped
    for name in ("ibp", "crown", "_ibp_layers", "_refine"):
        monkeypatch.setattr(BoundedNet, name, spy(getattr(BoundedNet, name)))
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield seen
        assert seen, "no bound computation was observed"
        on = [s for s in seen if s[1] or s[2]]
        assert not on, f"bounds computed with TF32 on: {on[:3]}"
        # and restored afterwards
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _small():
    model, shape = random_net("cnn", torch.Generator().manual_seed(3))
    x = torch.rand(20, *shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, shape, x, y


def test_tf32_off_in_verify_float_and_milp_pre_bounds(tf32_on):
    from verisparse.verify.float_verify import verify_float
    from verisparse.verify.milp import MilpNet
    model, shape, x, y = _small()
    net = bounded_net(model, shape)

    def runtime(v):
        with torch.no_grad():
            return model(torch.as_tensor(v)).numpy()
    verify_float(net, runtime, x, y, 0.05, "crown", device="cpu")
    n = len(tf32_on)
    x_l, x_u = sound_box(x[:2], 0.05)
    MilpNet(net, shape).pre_bounds(x_l, x_u)
    assert len(tf32_on) > n


def test_tf32_off_in_the_trainers_evaluation(tf32_on):
    from verisparse.trainer.evaluate import evaluate
    model, shape, x, y = _small()
    out = evaluate(model, x, y, 0.05, 4, full_crown=True)
    assert out["clean_acc"] == 1.0


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, digits_export):
    return digits_export(tmp_path_factory.mktemp("int8") / "mlp", "mlp_2layer", eps=0.05, epochs=2)


@pytest.mark.slow
def test_tf32_off_in_int8_verification(tf32_on, int8_run):
    from verisparse.trainer.datasets import load_dataset
    from verisparse.verify.artifact import load_artifact
    ds = load_dataset("digits")
    art = load_artifact(int8_run / "model_int8.tflite")
    res = art.verify(ds.x_test[:30], ds.y_test[:30], 0.05, "crown")
    assert len(res) == 30 and np.isfinite([r.margin_lower for r in res]).any()


@pytest.mark.slow
def test_int8_verification_refuses_cuda(int8_run, monkeypatch):
    from click.testing import CliRunner

    from verisparse.cli import main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    r = CliRunner().invoke(main, ["verify", str(int8_run / "model_int8.tflite"), "--n", "5", "--device", "cuda"])
    assert r.exit_code == 2 and "on the CPU" in r.output, r.output


def test_device_cuda_without_cuda_exits_2(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from verisparse.cli import main
    from verisparse.trainer.train import TrainConfig, train
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    train(TrainConfig(dataset="digits", arch="mlp_2layer", epochs=1, eval_crown_every=-1), out, progress=False)
    r = CliRunner().invoke(main, ["verify", str(out / "checkpoint.pt"), "--n", "5", "--device", "cuda"])
    assert r.exit_code == 2 and "CUDA" in r.output, r.output
