import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)

import pytest  # noqa: E402

ZOO = ("mlp_2layer", "mlp_3layer", "mlp_5layer", "cnn_4layer", "cnn_7layer")
MODES = {"dense": dict(baseline="dense"), "unstructured": dict(sparsity=0.9),
         "structured": dict(structure="structured", sparsity=0.5)}


def trained_digits_export(out, arch, eps, epochs, **kw):
    """A short certified training run on digits (0.9 sparse unless kw says otherwise), exported."""
    from verisparse.exporter.export import export_run
    from verisparse.trainer.train import TrainConfig, train
    kw = dict(dict(batch_size=128, update_every=5, sparsity=0.9), **kw)
    train(TrainConfig(dataset="digits", arch=arch, eps=eps, epochs=epochs, **kw), out, progress=False)
    export_run(out)
    return out


@pytest.fixture(scope="session")
def digits_export(tmp_path_factory):
    """trained_digits_export(out, ...) that trains and exports each setting once per session:
    several modules ask for the same short run, and each gets its own copy (tests write
    certificates and firmware into it). Training is seeded, so a copy is what a fresh run makes."""
    made = {}

    def get(out, arch, eps, epochs, **kw):
        key = (arch, eps, epochs, tuple(sorted(kw.items())))
        if key not in made:
            made[key] = trained_digits_export(tmp_path_factory.mktemp("shared") / "run", arch, eps, epochs, **kw)
        shutil.copytree(made[key], out)
        return out
    return get


@pytest.fixture(scope="session")
def zoo_runs(tmp_path_factory):
    """Every zoo architecture in every sparsity mode, briefly trained on digits (8x8).
    The loss is the natural one (kappa 1): a few epochs of certified training leave some of
    these models at chance, and float/int8 comparisons on a model at chance mean nothing.
    cnn_7layer learns fast only with BatchNorm, or without it at a lower rate (structured
    pruning does not combine with BatchNorm yet)."""
    from verisparse.trainer.train import TrainConfig, train
    root = tmp_path_factory.mktemp("zoo")
    done = {}
    for arch in ZOO:
        for mode, kw in MODES.items():
            bn = arch == "cnn_7layer" and mode != "structured"
            out = root / f"{arch}-{mode}"
            lr = 2e-3 if arch == "cnn_7layer" and not bn else 5e-3
            train(TrainConfig(dataset="digits", arch=arch, eps=0.02, epochs=5, lr=lr, kappa_end=1.0,
                              batch_size=32, batchnorm=bn, update_every=5, eval_crown_every=-1, **kw),
                  out, progress=False)
            done[(arch, mode)] = out
    return done


@pytest.fixture(scope="session")
def zoo_exports(zoo_runs):
    """(run directory, export report) per (arch, mode): model.onnx and model_int8.tflite written."""
    from verisparse.exporter.export import export_run
    return {key: (run, export_run(run, calibration=200)) for key, run in zoo_runs.items()}


@pytest.fixture
def one_thread():
    """Tiny networks: a second OpenMP thread only adds synchronisation."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
