"""bench/verify_speed.py --methods: the per-method verdict table for any run directory."""
import sys
from pathlib import Path

import pytest


sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
import verify_speed as vs  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits_export):
    return digits_export(tmp_path_factory.mktemp("speed") / "run", "mlp_2layer", eps=0.05, epochs=2)


def test_method_rows_count_every_sample_and_the_cascade_only_adds(run, one_thread):
    from verisparse.trainer.datasets import load_dataset
    from verisparse.verify.artifact import load_artifact
    art = load_artifact(run / "model.onnx")
    ds = load_dataset("digits")
    rows = vs.method_rows(art, ds.x_test[:30], ds.y_test[:30], 0.1, ["ibp", "crown", "auto"], 2.0)
    assert [r["method"] for r in rows] == ["ibp", "crown", "auto"]
    for r in rows:
        assert r["verified"] + r["falsified"] + r["unknown"] == 30
        assert 0 <= r["max_sample"] <= r["seconds"]
    ibp, crown, auto = rows
    assert ibp["verified"] <= crown["verified"] <= auto["verified"]
    assert auto["unknown"] <= crown["unknown"]
    assert ibp["unknown"] > 0  # at eps 0.1 something is open, so the table says something
    table = vs.methods_table(rows)
    assert table.splitlines()[0].startswith("| method | verified | falsified | unknown |")
    assert f"| auto | {auto['verified']} | {auto['falsified']} | {auto['unknown']} |" in table


def test_main_with_methods_prints_only_that_table(run, capsys):
    vs.main(["--run", str(run), "--methods", "crown", "--n", "10", "--eps", "0.05", "--time-limit", "1",
             "--threads", "1"])
    out = capsys.readouterr().out
    assert "digits mlp_2layer, eps 0.05), 10 test samples, 1 s per sample, 1 threads" in out
    assert "| crown |" in out and "ladder" not in out
