"""`verify` on hostile inputs: small files that would exhaust memory or time are refused by
limits checked before allocating, external data is never read, error messages never print
tensor contents, and file datasets named inside an artifact need the user's say-so."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from verisparse.cli import main
from verisparse.errors import VeriSparseError
from verisparse.trainer.datasets import load_dataset


def _cli(*args):
    return CliRunner().invoke(main, ["verify", *map(str, args)])


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.output.strip().count("\n") == 0, r.output
    for needle in needles:
        assert needle in r.output, r.output


def _model(path, nodes, inits, in_shape=(1, 8, 8), meta=None):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(m, meta or {})
    path.write_bytes(m.SerializeToString())
    return path


def _digits_linear(path, meta=None):
    """A linear classifier on digits (8x8): a real artifact in milliseconds."""
    w = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    return _model(path, nodes, [numpy_helper.from_array(w, "W")], meta=meta)


def test_a_tiny_onnx_with_a_huge_padded_conv_is_refused_before_allocating(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[3014] * 4),
             helper.make_node("Flatten", ["c"], ["f"]), helper.make_node("Gemm", ["f", "G"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "W"),
             numpy_helper.from_array(np.ones((10, 1), np.float32), "G")]
    p = _model(tmp_path / "pad.onnx", nodes, inits, in_shape=(1, 1, 1))
    assert p.stat().st_size < 1000
    _one_line_error(_cli(p, "--eps", 0.1, "--dataset", "digits"), "--max-elements", "36,3")


def test_limits_are_flags(tmp_path):
    p = _digits_linear(tmp_path / "m.onnx")
    _one_line_error(_cli(p, "--eps", 0.1, "--dataset", "digits", "--max-elements", 50), "--max-elements")
    _one_line_error(_cli(p, "--eps", 0.1, "--dataset", "digits", "--max-classes", 5), "--max-classes")
    _one_line_error(_cli(p, "--eps", 0.1, "--dataset", "digits", "--max-work", 1000), "--max-work", "--n")
    r = _cli(p, "--eps", 0.1, "--dataset", "digits", "--n", 5, "--method", "ibp", "--max-work", 1000)
    assert r.exit_code == 0, r.output


def test_time_budget_turns_the_rest_unknown(tmp_path):
    p = _digits_linear(tmp_path / "m.onnx")
    r = _cli(p, "--eps", 0.1, "--dataset", "digits", "--n", 20, "--time-budget", 1e-9,
             "--report", tmp_path / "c.json")
    assert r.exit_code == 0 and "--time-budget ran out" in r.output, r.output
    cert = json.loads((tmp_path / "c.json").read_text())
    assert {s["decided_by"] for s in cert["samples"]} == {"time-budget"}
    assert cert["summary"]["unknown"] == 20 and cert["summary"]["clean_correct"] == 0
    assert _cli("--check", tmp_path / "c.json").exit_code == 0


@pytest.mark.parametrize("label", [1e9, 10 ** 6])
def test_a_huge_label_is_refused_before_building_class_names(tmp_path, label):
    p = tmp_path / "d.npz"
    x = np.zeros((10, 1, 8, 8), np.float32)
    np.savez(p, x=x, y=np.array([0] * 9 + [label]))
    with pytest.raises(VeriSparseError, match="--max-classes"):
        load_dataset(f"npz:{p}")
    if label == 10 ** 6:  # a flag raises the limit
        assert load_dataset(f"npz:{p}", max_classes=10 ** 6 + 1).num_classes == 10 ** 6 + 1
    np.savez(p, x=x, y=np.zeros(10), classes=np.array(["a"] * 20_000))
    with pytest.raises(VeriSparseError, match="--max-classes"):
        load_dataset(f"npz:{p}")
    csv = tmp_path / "d.csv"
    csv.write_text("0.5,0\n0.5,1\n0.5,0\n0.5,1000000000\n0.5,1\n")
    with pytest.raises(VeriSparseError, match="--max-classes"):
        load_dataset(f"csv:{csv}")
    m = _digits_linear(tmp_path / "m.onnx")
    _one_line_error(_cli(m, "--eps", 0.1, "--dataset", f"npz:{p}"), "--max-classes")


def _external_constant_model(tmp_path, location):
    """A Constant whose tensor points at a file by external data, used as a Reshape target."""
    t = TensorProto(name="shape", data_type=TensorProto.INT64, dims=[2], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        t.external_data.add(key=k, value=v)
    nodes = [helper.make_node("Constant", [], ["s"], value=t), helper.make_node("Reshape", ["x", "s"], ["f"]),
             helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    return _model(tmp_path / "leak.onnx", nodes, [numpy_helper.from_array(np.ones((10, 64), np.float32), "W")])


@pytest.mark.parametrize("location", ["leak.bin", "sub/leak.bin"])
def test_external_data_is_never_read_or_printed(tmp_path, monkeypatch, location):
    secret = np.array([1234567890123, 987654321987], np.int64)
    (tmp_path / "sub").mkdir()
    for where in (tmp_path / "leak.bin", tmp_path / "sub" / "leak.bin"):
        where.write_bytes(secret.tobytes())
    p = _external_constant_model(tmp_path, location)
    monkeypatch.chdir(tmp_path)
    for cwd_relative in (p, p.name):
        r = _cli(cwd_relative, "--eps", 0.1, "--dataset", "digits")
        _one_line_error(r, "external data")
        assert "1234567890123" not in r.output and "987654321987" not in r.output


def test_reshape_errors_do_not_print_long_constants(tmp_path):
    target = np.arange(1000, 1100, dtype=np.int64)
    nodes = [helper.make_node("Reshape", ["x", "s"], ["f"]), helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    p = _model(tmp_path / "r.onnx", nodes, [numpy_helper.from_array(target, "s"),
                                            numpy_helper.from_array(np.ones((10, 64), np.float32), "W")])
    r = _cli(p, "--eps", 0.1, "--dataset", "digits")
    _one_line_error(r, "100 values")
    assert "1050" not in r.output


def test_file_dataset_named_by_an_artifact_needs_consent(tmp_path):
    d = tmp_path / "d.npz"
    ds = load_dataset("digits")
    np.savez(d, x=ds.x_test.numpy(), y=ds.y_test.numpy())
    p = _digits_linear(tmp_path / "m.onnx", meta=dict(dataset=f"npz:{d}", eps="0.05"))
    _one_line_error(_cli(p, "--n", 5, "--method", "ibp"), "--trust-artifact-paths", "--dataset")
    assert _cli(p, "--n", 5, "--method", "ibp", "--trust-artifact-paths").exit_code == 0
    assert _cli(p, "--n", 5, "--method", "ibp", "--dataset", f"npz:{d}").exit_code == 0
    # a run directory's config.json beside the artifact is no different
    (tmp_path / "run").mkdir()
    q = _digits_linear(tmp_path / "run" / "model.onnx")
    (tmp_path / "run" / "config.json").write_text(json.dumps(dict(dataset="csv:/etc/passwd", eps=0.05)))
    _one_line_error(_cli(q, "--n", 5), "--trust-artifact-paths")
    assert _cli(q, "--n", 5, "--method", "ibp", "--dataset", "digits", "--report", tmp_path / "c.json").exit_code == 0


def test_external_tensors_are_found_anywhere(tmp_path):
    from verisparse.verify.onnx_import import load_onnx_proto
    p = _external_constant_model(tmp_path, "leak.bin")
    m = onnx.load(str(p), load_external_data=False)
    with pytest.raises(VeriSparseError, match="external data"):
        load_onnx_proto(m.SerializeToString())


@pytest.mark.parametrize("seed", ["-3", "1e400", "x"])
def test_a_hostile_recorded_seed_exits_2(tmp_path, seed):
    p = _digits_linear(tmp_path / "m.onnx", meta=dict(dataset="digits", eps="0.05", seed=seed))
    _one_line_error(_cli(p, "--n", 5, "--method", "ibp"), "seed")
