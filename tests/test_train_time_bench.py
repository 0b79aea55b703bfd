"""bench/train_time.py --set: settings reach each method's TrainConfig with their types."""
import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
import train_time as tt  # noqa: E402

from verisparse.errors import VeriSparseError  # noqa: E402
from verisparse.trainer.train import TrainConfig  # noqa: E402


def test_set_passes_gradual_pruning_to_structured_verisparse_only():
    sets = [tt._setting(s) for s in ("verisparse.structured.initial_density=1",
                                     "verisparse.structured.prune_window=1", "verisparse.structured.lr=4e-3",
                                     "hydra.update_every=50")]
    ours = tt._settings_for(sets, "verisparse", "structured")
    assert ours == dict(initial_density=1.0, prune_window=1.0, lr=4e-3)
    assert all(type(v) is float for v in ours.values())
    cfg = TrainConfig(structure="structured", sparsity=0.95, **ours).resolved()
    assert (cfg.initial_density, cfg.prune_window) == (1.0, 1.0)
    assert tt._settings_for(sets, "verisparse", "unstructured") == {}
    assert tt._settings_for(sets, "hydra", "structured") == dict(update_every=50)
    with pytest.raises(VeriSparseError, match="initial-density"):  # a bad value fails before any training
        TrainConfig(structure="structured", sparsity=0.95, **tt._settings_for(
            [tt._setting("verisparse.initial_density=0.01")], "verisparse", "structured")).resolved()


def test_set_overrides_the_bench_defaults_for_every_method_dense_included():
    base = dict(dataset="mnist5k", epochs=100, eval_every=1)
    sets = [tt._setting(s) for s in ("dense.eval_every=5", "hydra.eval_every=5", "verisparse.epochs=44",
                                     "verisparse.structured.epochs=90")]
    groups = tt._groups(base, sets, [0.95], ["unstructured", "structured"], ["verisparse", "hydra"])
    assert groups[("dense", "-", 0.0)] == dict(dataset="mnist5k", epochs=100, eval_every=5, baseline="dense")
    assert groups[("hydra", "structured", 0.95)]["eval_every"] == 5
    assert groups[("verisparse", "unstructured", 0.95)]["epochs"] == 44
    assert groups[("verisparse", "structured", 0.95)]["epochs"] == 90
    assert groups[("verisparse", "structured", 0.95)]["baseline"] is None
    for settings in groups.values():
        TrainConfig(**settings).resolved()


def test_set_for_one_sparsity_overrides_the_structure_wide_one_whatever_the_order():
    sets = [tt._setting(s) for s in ("verisparse.structured@0.99.initial_density=0.5",
                                     "verisparse.structured.initial_density=1", "verisparse@0.99.epochs=90",
                                     "verisparse.epochs=60", "verisparse.lr=2e-3", "verisparse.structured.lr=3e-3")]
    assert sets[0] == ("verisparse", "structured", 0.99, "initial_density", 0.5)
    groups = tt._groups(dict(epochs=100), sets, [0.95, 0.99], ["unstructured", "structured"], ["verisparse"])
    assert {k: (g["initial_density"] if "initial_density" in g else None, g["epochs"], g["lr"])
            for k, g in groups.items() if k[0] == "verisparse"} == {
        ("verisparse", "unstructured", 0.95): (None, 60, 2e-3),
        ("verisparse", "unstructured", 0.99): (None, 90, 2e-3),
        ("verisparse", "structured", 0.95): (1.0, 60, 3e-3),
        ("verisparse", "structured", 0.99): (0.5, 90, 3e-3)}


@pytest.mark.parametrize("text", ["verisparse.structured@1.5.lr=1", "verisparse@x.lr=1", "dense@0.9.lr=1",
                                  "verisparse.structured@.lr=1", "verisparse.structured@0.99=1",
                                  "verisparse.structured.initial_density=dense", "verisparse.structured.nope=1",
                                  "verisparse.sideways.prune_window=1", "hydra.baseline=dense",
                                  "verisparse.structured.sparsity=0.9", "dense.seed=3", "hydra.structure=structured"])
def test_set_refuses_what_it_cannot_use(text):
    with pytest.raises(argparse.ArgumentTypeError):
        tt._setting(text)


def test_time_to_target_skips_epochs_still_thinning():
    log = [dict(phase="gradual", effective_params=9000, crown_ibp_verified_acc=0.95, train_seconds=1.0),
           dict(phase="gradual", effective_params=500, crown_ibp_verified_acc=0.90, train_seconds=2.0),
           dict(phase="sparse", effective_params=500, crown_ibp_verified_acc=0.91, train_seconds=3.0)]
    assert tt._time_to(log, 0.9, sparse=True) == 2.0
    assert tt._time_to(log, 0.9, sparse=False) == 1.0


def test_time_to_target_reads_only_epochs_with_a_crown_ibp_figure():
    # a run trained with --set METHOD.eval_every=N logs CROWN-IBP every N epochs only
    log = [dict(phase="sparse", effective_params=500, crown_ibp_verified_acc=0.80, train_seconds=1.0),
           dict(phase="sparse", effective_params=500, train_seconds=2.0),
           dict(phase="sparse", effective_params=500, crown_ibp_verified_acc=0.92, train_seconds=3.0)]
    assert tt._time_to(log, 0.9, sparse=True) == 3.0
    assert tt._time_to(log, 0.95, sparse=True) is None


def _logs(*finals):
    return [[dict(crown_verified_acc=acc, train_seconds=sec)] for acc, sec in finals]


def test_claim_is_judged_on_the_means_over_seeds():
    """One lucky seed does not make the claim, and one unlucky one does not break it."""
    hydra = _logs((0.90, 60.0), (0.88, 66.0))  # mean 89.0%, 63 s
    lucky = _logs((0.905, 20.0), (0.865, 20.0))  # seed 0 above HYDRA's, mean 88.5%: -0.5 pt
    assert "MET (-0.5 pt, 0.32x" in tt._claim(lucky, [hydra], hydra)
    short = _logs((0.905, 20.0), (0.855, 20.0))  # mean 88.0%: -1.0 pt
    assert "not met (-1.0 pt, 0.32x" in tt._claim(short, [hydra], hydra)
    slow = _logs((0.91, 22.0), (0.89, 22.0))
    assert "not met (+1.0 pt, 0.35x" in tt._claim(slow, [hydra], hydra)
