"""`verisparse verify` end to end on a small digits run: exit codes, cert.json, JUnit, --check,
VNN-LIB export, and the same results from checkpoint.pt and model.onnx."""
import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner

from verisparse.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits_export):
    return digits_export(tmp_path_factory.mktemp("verify") / "mlp", "mlp_2layer", eps=0.05, epochs=3)


def _verify(*args):
    return CliRunner().invoke(main, ["verify", *map(str, args)])


@pytest.mark.slow
def test_verify_onnx_writes_certificate_junit_and_gates_on_min_vra(run_dir, tmp_path):
    cert_path, junit = tmp_path / "cert.json", tmp_path / "ci.xml"
    r = _verify(run_dir / "model.onnx", "--n", 60, "--method", "milp", "--time-limit", 5,
                "--report", cert_path, "--junit", junit)
    assert r.exit_code == 0, r.output
    cert = json.loads(cert_path.read_text())
    s = cert["summary"]
    assert s["n"] == 60 and s["verified"] + s["falsified"] + s["unknown"] == 60
    assert s["verified_accuracy"] <= s["attack_robust_accuracy"]
    assert cert["artifact"]["sha256"] and cert["dataset"]["split_sha256"] and cert["tool"]["version"]
    assert {"index", "label", "status", "margin_lower", "seconds"} <= set(cert["samples"][0])
    assert "ladder: verified" in r.output
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("tests")) == 61 and suite.get("failures") == "0"
    # the gate: a threshold above what was verified fails with exit 1
    high = min(1.0, s["verified_accuracy"] + 0.05)
    r = _verify(run_dir / "model.onnx", "--n", 60, "--method", "ibp", "--min-vra", high, "--junit", junit)
    assert r.exit_code == 1 and "FAIL" in r.output
    assert ET.parse(junit).getroot().find("testsuite").get("failures") == "1"
    # the certificate re-checks, and a changed artifact fails the check
    assert _verify("--check", cert_path).exit_code == 0
    copy = tmp_path / "model.onnx"
    shutil.copyfile(run_dir / "model.onnx", copy)
    cert["artifact"]["path"] = str(copy)
    cert_path.write_text(json.dumps(cert))
    assert _verify("--check", cert_path).exit_code == 0
    with open(copy, "ab") as f:
        f.write(b"\0")
    r = _verify("--check", cert_path)
    assert r.exit_code == 1 and "changed" in r.output


@pytest.mark.slow
def test_checkpoint_onnx_and_int8_artifacts(run_dir, tmp_path):
    from verisparse.verify.artifact import load_artifact
    from verisparse.trainer.datasets import load_dataset
    ds = load_dataset("digits")
    x, y = ds.x_test[:80], ds.y_test[:80]
    a = load_artifact(run_dir / "checkpoint.pt").verify(x, y, 0.05, "crown")
    b = load_artifact(run_dir / "model.onnx").verify(x, y, 0.05, "crown")
    assert [r.status for r in a] == [r.status for r in b]
    assert np.allclose([r.margin_lower for r in a], [r.margin_lower for r in b], atol=1e-4)
    r = _verify(run_dir / "model_int8.tflite", "--n", 40, "--method", "auto")
    assert r.exit_code == 0, r.output
    assert "int8-" in r.output and (run_dir / "certificate_model_int8.json").exists()
    r = _verify(run_dir / "model_int8.tflite", "--n", 5, "--method", "milp")
    assert r.exit_code == 2 and "not available" in r.output


@pytest.mark.slow
def test_export_vnnlib_layout(run_dir, tmp_path):
    out = tmp_path / "vnn"
    r = _verify(run_dir / "model.onnx", "--n", 3, "--method", "ibp", "--report", tmp_path / "c.json",
                "--export-vnnlib", out)
    assert r.exit_code == 0, r.output
    rows = (out / "instances.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("model.onnx,vnnlib/sample_0.vnnlib,")
    text = (out / "vnnlib" / "sample_0.vnnlib").read_text()
    assert text.count("(declare-const X_") == 64 and text.count("(declare-const Y_") == 10
    assert "(assert (or" in text and text.count("(and (>= Y_") == 9
    assert (out / "model.onnx").read_bytes() == (run_dir / "model.onnx").read_bytes()


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line(run_dir, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    hostile = tmp_path / "model_int8.tflite"
    hostile.write_bytes(b"\x10\x00\x00\x00TFL3" + b"\x7f" * 40)
    cases = [
        ([bad, "--eps", 0.1, "--dataset", "digits"], "not a readable ONNX"),
        ([hostile, "--eps", 0.1, "--dataset", "digits"], "TFLite"),
        ([run_dir / "model.onnx", "--eps", 1.5], "--eps"),
        ([run_dir / "model.onnx", "--eps", 0], "--eps"),
        ([run_dir / "model.onnx", "--dataset", "mnist5k"], "shape"),
        ([run_dir / "model.onnx", "--method", "exact"], "--method"),
        ([tmp_path / "missing.onnx"], "not found"),
        ([tmp_path / "x.txt"], "not found"),
        (["--check", tmp_path / "nope.json"], "not found"),
    ]
    for args, needle in cases:
        r = _verify(*args)
        assert r.exit_code == 2, (args, r.output)
        assert needle in r.output and "Traceback" not in r.output, (args, r.output)
