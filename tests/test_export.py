import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from verisparse.errors import VeriSparseError
from verisparse.exporter.fold import fold
from verisparse.trainer.layers import MaskedConv2d, MaskedLinear
from conftest import MODES, ZOO

@pytest.mark.parametrize("arch", ZOO)
@pytest.mark.parametrize("mode", list(MODES))
def test_export_every_zoo_model(zoo_exports, arch, mode):
    run, report = zoo_exports[(arch, mode)]
    tol = 1e-5 * max(1.0, report["parity"]["max_abs_logit"])
    assert report["parity"]["fold_max_abs_error"] <= tol and report["parity"]["onnx_max_abs_error"] <= tol
    p8 = report["parity"]["int8"]
    assert p8["samples"] == 359 and p8["litert_vs_tflm_differing_outputs"] == 0
    assert p8["float_accuracy"] > 0.6, "the fixture model should classify, or parity means nothing"
    assert p8["int8_accuracy"] >= p8["float_accuracy"] - 0.01, p8
    # weakly trained 8x8 models have many near-ties below the int8 output step; on the rows
    # the int8 output can resolve, the 99% agreement must hold (the default run: 99.7% on all)
    assert p8["top1_agreement_resolvable"] >= 0.99 and p8["unresolvable_rows"] < 0.1 * p8["samples"], p8
    t = report["tflite"]
    assert t["input"]["dtype"] == t["output"]["dtype"] == "int8" and t["output"]["shape"] == [1, 10]
    assert t["input"]["shape"] == [1, 8, 8, 1]  # NHWC
    assert t["calibration_samples"] == 200 and 0 <= t["calibration_saturation"]["fraction"] < 0.01
    _check_tflite_ops(run / "model_int8.tflite")
    proto = onnx.load(run / "model.onnx")
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["eps"] == "0.02" and json.loads(meta["input_shape"]) == [1, 8, 8] and len(meta["checkpoint_sha256"]) == 64
    assert json.loads(meta["class_names"]) == [str(i) for i in range(10)]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    before, after = report["totals_before"], report["totals_after"]
    assert after["params"] <= before["params"]
    if mode == "structured":
        assert after["params"] < 0.7 * before["params"]  # pruned units are physically gone
    if mode == "unstructured":
        assert after["nonzero_weights"] <= before["nonzero_weights"]
    # batch dimension really is dynamic
    import onnxruntime as ort
    sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    for b in (1, 7):
        assert sess.run(None, {"input": np.random.rand(b, 1, 8, 8).astype(np.float32)})[0].shape == (b, 10)


def _check_tflite_ops(path):
    """int8 everywhere, per-channel conv weights, and no FULLY_CONNECTED (see tflite_export)."""
    from verisparse.int8_runtime import litert
    it = litert(path.read_bytes())
    ops = {op["op_name"] for op in it._get_ops_details()}
    assert ops <= {"CONV_2D", "RESHAPE", "PAD", "MUL", "ADD"}, ops
    for t in it.get_tensor_details():
        if t["dtype"] == np.float32:
            raise AssertionError(f"float tensor {t['name']} in the int8 model")
        scales = t["quantization_parameters"]["scales"]
        if len(t["shape"]) == 4 and t["dtype"] == np.int8 and len(scales) > 1:
            assert len(scales) == t["shape"][0]  # one scale per output channel


def test_fold_moves_constant_units_into_the_next_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), MaskedLinear(4, 3), nn.ReLU(), MaskedLinear(3, 2)).eval()
    with torch.no_grad():
        model[1].weight_mask[1] = 0      # unit 1 has no inputs: outputs relu(b1)
        model[1].bias[1] = 0.7
        model[3].weight_mask[:, 2] = 0   # unit 2 is read by nobody
    folded = fold(model, (4,))
    assert folded[1].weight.shape == (1, 4) and folded[3].weight.shape == (2, 1)
    x = torch.rand(20, 4)
    assert torch.allclose(folded(x), model(x), atol=1e-6)


def test_fold_keeps_a_constant_channel_where_padding_makes_it_position_dependent():
    torch.manual_seed(0)
    model = nn.Sequential(MaskedConv2d(1, 2, 3, 1, 1), nn.ReLU(), MaskedConv2d(2, 2, 3, 1, 1), nn.ReLU(),
                          nn.Flatten(), MaskedLinear(2 * 5 * 5, 3)).eval()
    with torch.no_grad():
        model[0].weight_mask[0] = 0
        model[0].bias[0] = 0.5
    folded = fold(model, (1, 5, 5))
    assert folded[0].weight.shape[0] == 2
    x = torch.rand(4, 1, 5, 5)
    assert torch.allclose(folded(x), model(x), atol=1e-6)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "verisparse", *args], capture_output=True, text=True)


def test_export_bad_input(tmp_path, zoo_runs):
    r = _cli("export", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no checkpoint" in r.stderr and "Traceback" not in r.stderr
    src = zoo_runs[("mlp_2layer", "dense")]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(src.joinpath("checkpoint.pt").read_bytes()[:200])
    r = _cli("export", str(bad))
    assert r.returncode == 2 and "not a readable checkpoint" in r.stderr
    state = torch.load(src / "checkpoint.pt", weights_only=True)
    state["config"]["arch"] = "resnet18"
    torch.save(state, bad / "checkpoint.pt")
    r = _cli("export", str(bad))
    assert r.returncode == 2 and "unknown arch" in r.stderr
    state["config"]["arch"] = "mlp_3layer"  # a checkpoint that does not fit its stated arch
    torch.save(state, bad / "checkpoint.pt")
    r = _cli("export", str(bad))
    assert r.returncode == 2 and "does not fit" in r.stderr
    assert not (bad / "model.onnx").exists() and not (bad / "export.json").exists()


def test_failed_export_leaves_previous_artifacts(zoo_exports):
    run, _ = zoo_exports[("mlp_2layer", "unstructured")]
    before = {f: (run / f).read_bytes() for f in ("model.onnx", "model_int8.tflite", "export.json")}
    for n in ("5", "100000"):
        r = _cli("export", str(run), "--calibration", n)
        assert r.returncode == 2 and "--calibration must be between" in r.stderr and "Traceback" not in r.stderr
    assert {f: (run / f).read_bytes() for f in before} == before


def test_unsupported_layer_is_named():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(VeriSparseError, match="Tanh"):
        fold(model, (4,))
