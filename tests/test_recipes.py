"""The paper-scale recipe (docs/recipes.md) trains: cnn_7layer with CROWN-IBP at eps 2/255 and
8/255 on data in torchvision's CIFAR-10 layout (a few random CIFAR-shaped images here; the
recipe's cost on the real dataset is bench/recipe_timing.py's to measure)."""
import math
import sys
from pathlib import Path

import pytest

from verisparse.trainer.train import TrainConfig, load_run, train

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
from recipe_timing import write_cifar_layout  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("eps", [2 / 255, 8 / 255])
def test_cnn_7layer_crown_ibp_trains_on_cifar_layout(tmp_path, eps):
    root = write_cifar_layout(tmp_path / "data", n_train=16, n_test=4)
    # two steps: the eps ramp is above 0 on the second, where CROWN-IBP (beta 0.5) and IBP both count
    cfg = TrainConfig(dataset="cifar10", data_root=str(root), arch="cnn_7layer", method="crown-ibp", eps=eps,
                      eps_train=1.1 * eps, sparsity=0.9, epochs=1, warmup_epochs=0, ramp_epochs=1, batch_size=8,
                      eval_crown_every=-1)
    log = train(cfg, tmp_path / "run", progress=False)
    last = log[-1]
    assert last["eps_train_now"] == pytest.approx(0.5 * 1.1 * eps) and last["beta"] == pytest.approx(0.5)
    assert math.isfinite(last["loss"]) and last["sparsity"] == pytest.approx(0.9, abs=1e-4)
    model, c, ds = load_run(tmp_path / "run")
    assert ds.input_shape == (3, 32, 32) and c.arch == "cnn_7layer"
    assert model(ds.x_test).shape == (4, 10)
