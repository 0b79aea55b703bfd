"""`verisparse firmware` on graphs built in Python (no TensorFlow, no training, seconds): an
inconsistent graph is one VeriSparseError before any C is written, a firmware whose bytes
differ from the interpreters' is a negative verdict (exit 1) recorded in firmware.json, a
failed run leaves no report claiming exactness for other files, and a hanging or failing
toolchain is one VeriSparseError that says what to do."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from verisparse.cli import main
from verisparse.errors import VeriSparseError
from verisparse.firmware import generate, toolchain
from verisparse.firmware.lower import lower
from verisparse.tflite_graph import Graph, Operator, Tensor


def _act(i, shape, scale=0.1, zp=-1):
    return Tensor(i, f"t{i}", shape, np.dtype(np.int8), np.array([scale]), np.array([zp]), 0, None)


def _const(i, data, scale=None):
    q = np.zeros(0) if scale is None else np.asarray(scale, np.float64)
    return Tensor(i, f"t{i}", data.shape, data.dtype, q, np.zeros(len(q), np.int64), 0, data)


def _pool(inp, out, filter_h=1, filter_w=1, stride=1):
    return Operator("AVERAGE_POOL_2D", [inp], [out], dict(padding="VALID", stride_h=stride, stride_w=stride,
                                                           filter_h=filter_h, filter_w=filter_w,
                                                           fused_activation="NONE"))


def _graph(conv_inputs=(0, 3, 4), extra_ops=(), pool_shape=(1, 4, 4, 3), pool=None, seed=0):
    """input t0 [1,4,4,2] -> CONV_2D 3x3 SAME -> t1 -> AVERAGE_POOL_2D -> t2 (the output);
    the weights t3 and bias t4 are the last tensors, so index -1 would find the bias."""
    w = np.random.default_rng(seed).integers(-5, 6, (3, 3, 3, 2)).astype(np.int8)
    tensors = [_act(0, (1, 4, 4, 2)), _act(1, (1, 4, 4, 3), 0.05, 2), _act(2, pool_shape, 0.05, 2),
               _const(3, w, [0.01, 0.02, 0.03]), _const(4, np.arange(3, dtype=np.int32))]
    conv = Operator("CONV_2D", list(conv_inputs), [1], dict(padding="SAME", stride_h=1, stride_w=1,
                                                             dilation_h=1, dilation_w=1, fused_activation="NONE"))
    return Graph(tensors, [*extra_ops, conv, pool or _pool(1, 2)], [0], [2])


OUT_SIZE = 4 * 4 * 3


# --- inconsistent graphs -----------------------------------------------------------------------

def test_the_hand_built_graph_lowers():
    prog = lower(_graph())
    assert [l.op for l in prog.layers] == ["CONV_2D", "AVERAGE_POOL_2D"]


def test_an_operator_writing_an_existing_tensor_is_refused():
    """The memory planner gives every tensor one writer: an op that overwrites its own input, a
    tensor an earlier op wrote, or the caller's const input buffer is refused."""
    in_place = _graph(pool=_pool(1, 1))  # reads and writes t1
    in_place.outputs = [1]
    with pytest.raises(VeriSparseError, match="writes tensor 't1', which the model's input or an earlier operator"):
        lower(in_place)
    with pytest.raises(VeriSparseError, match="writes tensor 't0'"):  # the model's input
        lower(_graph(extra_ops=[_pool(0, 0)]))
    twice = _graph()  # a second pool writes t2 again, from t1
    twice.operators.append(_pool(1, 2))
    with pytest.raises(VeriSparseError, match="AVERAGE_POOL_2D writes tensor 't2'"):
        lower(twice)


@pytest.mark.parametrize("conv_inputs", [(0, -1, 4), (0,), ()])
def test_absent_or_missing_operator_inputs_are_refused(conv_inputs):
    # (0, -1, 4) must not read tensor -1 (the bias) as weights; () must not raise IndexError
    with pytest.raises(VeriSparseError, match=r"operator 0 \(CONV_2D\): 2 inputs and one output expected"):
        lower(_graph(conv_inputs=conv_inputs))


def test_an_empty_pool_window_is_refused():
    # filter 0 x 2 matches a 3 x 2 output under VALID padding; AVERAGE_POOL_2D would divide by zero
    bad = _graph(pool=_pool(1, 2, filter_h=0, filter_w=2, stride=2), pool_shape=(1, 3, 2, 3))
    with pytest.raises(VeriSparseError, match="filter 0, stride 2, dilation 1.*must be positive"):
        lower(bad)


def test_dimensions_beyond_the_kernels_uint16_fields_are_refused():
    """A 1x1 CONV_2D over a 1 x 70000 image: in_w would wrap to 4464 in the C params struct."""
    n = 70000
    g = Graph([_act(0, (1, 1, n, 1)), _act(1, (1, 1, n, 1), 0.05, 2), _const(2, np.ones((1, 1, 1, 1), np.int8), [0.01])],
              [Operator("CONV_2D", [0, 2], [1], dict(padding="VALID", stride_h=1, stride_w=1, dilation_h=1,
                                                    dilation_w=1, fused_activation="NONE"))], [0], [1])
    with pytest.raises(VeriSparseError, match=r"operator 0 \(CONV_2D\): in_w = 70000 is outside \[0, 65535\]"):
        lower(g)


# --- --run: the verdict and its report ---------------------------------------------------------

@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A .tflite path whose parse is the hand-built graph; set `fake_model.seed` for other weights."""
    src = tmp_path / "model.tflite"
    src.write_bytes(b"stands in for a flatbuffer")
    state = dict(seed=0)
    monkeypatch.setattr(generate, "read_tflite", lambda path: _graph(seed=state["seed"]))
    return src, state


def _fake_toolchain(monkeypatch, printed_byte: int):
    """make and QEMU succeed; the firmware prints every output byte as printed_byte, the
    interpreters compute zeros."""
    def qemu(fw_dir, *a, **k):
        n = int(next(l for l in (fw_dir / "vs_vectors.h").read_text().splitlines()
                     if l.startswith("#define VS_NUM_VECTORS")).split()[-1])
        return "".join(f"VS-OUT {i} " + f"{printed_byte:02x}" * OUT_SIZE + "\n"
                       for i in range(n)) + "VS-END\n"

    monkeypatch.setattr(toolchain, "make", lambda *a, **k: "")
    monkeypatch.setattr(toolchain, "run_qemu", qemu)
    monkeypatch.setattr(generate, "run_tflm", lambda data, prog, vec: np.zeros((len(vec), OUT_SIZE), np.int8))
    monkeypatch.setattr(generate, "run_litert", lambda data, prog, vec: np.zeros((len(vec), OUT_SIZE), np.int8))
    monkeypatch.setattr(generate, "_measure", lambda *a: dict(
        flash=dict(bytes=1, target_bytes=2), ram=dict(bytes=1, stack_bytes_measured=0, target_bytes=2),
        instructions=dict(per_inference=1, per_effective_mac=0.1)))


def test_firmware_that_differs_from_the_interpreters_exits_1(fake_model, tmp_path, monkeypatch):
    """A negative verdict, not a usage error: the summary, one FAIL line, exit 1, and
    firmware.json written with exact false."""
    _fake_toolchain(monkeypatch, printed_byte=1)
    fw = tmp_path / "fw"
    r = CliRunner().invoke(main, ["firmware", str(fake_model[0]), "--out", str(fw), "--run", "--vectors", "2"])
    assert r.exit_code == 1, r.output
    assert "exact             0/2 vectors identical to TFLM" in r.output
    fails = [l for l in r.output.splitlines() if l.startswith("FAIL: ")]
    assert fails == [f"FAIL: the firmware's outputs differ from the interpreters' (TFLM: 96 bytes, LiteRT: 96); "
                     f"see {fw}/firmware.json"], r.output
    assert "error:" not in r.output and "Traceback" not in r.output
    report = json.loads((fw / "firmware.json").read_text())
    assert report["exactness"]["exact"] is False and report["exactness"]["tflm"]["differing_bytes"] == 96
    # the API returns the verdict rather than raising
    assert generate.generate_firmware(fake_model[0], out=fw, run=True, vectors=2)["exactness"]["exact"] is False


def test_firmware_that_matches_exits_0(fake_model, tmp_path, monkeypatch):
    _fake_toolchain(monkeypatch, printed_byte=0)
    fw = tmp_path / "fw"
    r = CliRunner().invoke(main, ["firmware", str(fake_model[0]), "--out", str(fw), "--run", "--vectors", "2"])
    assert r.exit_code == 0 and "FAIL" not in r.output, r.output
    assert json.loads((fw / "firmware.json").read_text())["exactness"]["exact"] is True


def test_a_failed_run_leaves_no_stale_firmware_json(fake_model, tmp_path, monkeypatch):
    """An exact run, then another model into the same folder whose build fails: firmware.json
    must not claim the earlier exactness beside the new sources."""
    src, state = fake_model
    fw = tmp_path / "fw"
    with monkeypatch.context() as m:
        _fake_toolchain(m, printed_byte=0)
        assert generate.generate_firmware(src, out=fw, run=True, vectors=2)["exactness"]["exact"] is True
    old_model_c = (fw / "model.c").read_text()

    def broken(*args, **kw):
        raise VeriSparseError("building the firmware failed")

    monkeypatch.setattr(toolchain, "make", broken)
    state["seed"] = 1
    with pytest.raises(VeriSparseError, match="building the firmware failed"):
        generate.generate_firmware(src, out=fw, run=True, vectors=2)
    assert (fw / "model.c").read_text() != old_model_c
    report = json.loads((fw / "firmware.json").read_text())
    assert "exactness" not in report and "flash" not in report


# --- the toolchain -----------------------------------------------------------------------------

class _Process:
    """What toolchain._run sees of subprocess.Popen: a command that hangs past any timeout, or one
    that ends at once with `returncode` and `stderr`."""
    def __init__(self, hang=False, returncode=0, stderr=""):
        self.hang, self.returncode, self.stderr, self.pid = hang, returncode, stderr, None

    def __call__(self, cmd, **kw):
        assert kw["start_new_session"]  # its own process group, so a hang kills make's children too
        self.cmd, self.pid = cmd, 999999
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def communicate(self, timeout=None):
        if self.hang and timeout is not None:
            raise subprocess.TimeoutExpired(self.cmd, timeout)
        return "", self.stderr


def test_a_hanging_build_or_emulator_is_one_clear_message(tmp_path, monkeypatch):
    killed = []
    monkeypatch.setattr(toolchain, "require", lambda *tools: None)
    monkeypatch.setattr(toolchain.subprocess, "Popen", _Process(hang=True))
    monkeypatch.setattr(toolchain.os, "killpg", lambda pid, sig: killed.append(pid))
    with pytest.raises(VeriSparseError, match=r"building the firmware \(make all\) did not finish within 5 s; "
                                              "use fewer --vectors"):
        toolchain.make(tmp_path, "all", timeout=5)
    with pytest.raises(VeriSparseError, match="the firmware in QEMU did not finish within 7 s; use fewer --vectors"):
        toolchain.run_qemu(tmp_path, timeout=7)
    with pytest.raises(VeriSparseError, match="the host build under the sanitizers did not finish within 3 s"):
        toolchain.run_host(tmp_path, timeout=3)
    with pytest.raises(VeriSparseError, match="arm-none-eabi-size did not finish within 60 s"):
        toolchain.section_sizes(tmp_path / "size.elf")
    assert killed == [999999] * 4


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_hanging_emulator_does_not_outlive_its_timeout(tmp_path, monkeypatch):
    """make's child (QEMU in a generated project) is killed with make, not left running."""
    import os
    import time
    (tmp_path / "Makefile").write_text("run:\n\tsh -c 'echo $$$$ > child.pid; exec sleep 60'\n")
    monkeypatch.setattr(toolchain, "require", lambda *tools: None)
    with pytest.raises(VeriSparseError, match="the firmware in QEMU did not finish within 1 s"):
        toolchain.run_qemu(tmp_path, timeout=1)
    pid = int((tmp_path / "child.pid").read_text())
    for _ in range(50):  # killed, then reaped once its parent is gone
        stat = Path(f"/proc/{pid}/stat")
        if not stat.exists() or stat.read_text().split(") ")[1].startswith("Z"):
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        raise AssertionError("make's child outlived the timeout")


def test_a_failing_size_tool_is_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(toolchain, "require", lambda *tools: None)
    monkeypatch.setattr(toolchain.subprocess, "Popen",
                        _Process(returncode=1, stderr="arm-none-eabi-size: size.elf: file format not recognized\n"))
    with pytest.raises(VeriSparseError, match="arm-none-eabi-size could not read .*file format not recognized; "
                                              "check the toolchain"):
        toolchain.section_sizes(tmp_path / "size.elf")
