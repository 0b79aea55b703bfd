"""`verisparse profile` and the light install: the CLI runs in a subprocess where torch,
TensorFlow, scipy, tflite-micro, onnx and matplotlib cannot be imported (tests/light)."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import trained_digits_export
from verisparse.cli import main

LIGHT = Path(__file__).parent / "light"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch digits run, exported, with an int8 certificate on 20 samples."""
    out = trained_digits_export(tmp_path_factory.mktemp("prof") / "run", "mlp_2layer", 0.02, 1, eval_crown_every=-1)
    r = CliRunner().invoke(main, ["verify", str(out / "model_int8.tflite"), "--method", "ibp", "--n", "20"])
    assert r.exit_code in (0, 1), r.output
    return out


def light(args, tmp_path, extra_block=""):
    """The CLI in a subprocess with the full extra's modules blocked; (result, blocked attempts)."""
    log = tmp_path / "blocked.log"
    env = dict(os.environ, PYTHONPATH=str(LIGHT), VS_BLOCK_LOG=str(log), VS_BLOCK_EXTRA=extra_block)
    r = subprocess.run([sys.executable, "-m", "verisparse", *args], capture_output=True, text=True, env=env,
                       timeout=300)
    return r, (log.read_text().split() if log.exists() else [])


def test_help_is_light(tmp_path):
    r, blocked = light(["--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "profile" in r.stdout
    assert blocked == []


@pytest.mark.parametrize("args", [["train", "--out", "x"], ["export", "x"], ["verify", "x.onnx"],
                                  ["firmware", "x.tflite"], ["report", "x"]])
def test_other_commands_name_the_extra(args, tmp_path):
    r, _ = light(args, tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "verisparse[full]" in lines[0] and "Traceback" not in r.stderr, r.stderr
    # --help still works for them
    r, _ = light([args[0], "--help"], tmp_path)
    assert r.returncode == 0


def test_profile_run_dir_light(run, tmp_path):
    r, blocked = light(["profile", str(run), "--threads", "1,2", "--warmup", "2", "--runs", "20"], tmp_path)
    assert r.returncode == 0, r.stderr
    # only the optional parts looked: the run's dataset for the bytes check, the plot
    assert set(blocked) <= {"torch", "matplotlib"}, blocked
    rec = json.loads((run / "profile.json").read_text())
    kinds = {a["kind"]: a for a in rec["artifacts"]}
    assert set(kinds) == {"tflite", "onnx"}
    rows = {(x["runtime"], x["threads"]) for x in kinds["tflite"]["rows"]}
    assert rows == {("litert", 1), ("litert", 2), ("litert-ref", 1)}
    assert {(x["runtime"], x["threads"]) for x in kinds["onnx"]["rows"]} == {("onnxruntime", 1), ("onnxruntime", 2)}
    for a in rec["artifacts"]:
        for x in a["rows"]:
            assert 0 < x["p50_ms"] <= x["p90_ms"] <= x["p99_ms"] <= x["max_ms"]
            assert x["load_ms"] > 0 and x["first_inference_ms"] > 0 and x["peak_rss_mib"] > 10
            assert x["runs"] == 20
    bc = kinds["tflite"]["bytes_check"]
    # without a firmware folder and without torch: extremes and seeded random inputs
    assert bc["vectors"] == 200 and "random" in bc["vectors_source"]
    assert set(bc["runtimes"]) == {"litert/1", "litert/2"}
    assert bc["certificate"]["covers_this_model"] is True
    assert "litert-ref" in bc["certificate"]["runtimes_computing_it_exactly"]
    # the recorded reference bytes are the reference kernels' on those vectors
    from verisparse.firmware.vectors import make_vectors
    from verisparse.int8_runtime import litert, run_litert
    data = (run / "model_int8.tflite").read_bytes()
    shape = litert(data).get_input_details()[0]["shape"][1:]
    ref = run_litert(data, make_vectors(200, shape, 1, 0), reference=True)
    assert bytes.fromhex(bc["reference_outputs_hex"]) == ref.tobytes()
    assert bc["reference_classes"] == ref.argmax(1).tolist()
    assert "litert-ref" in r.stdout and "onnxruntime" in r.stdout and "covers this model" in r.stdout


def test_profile_uses_firmware_vectors_and_compare(run, tmp_path):
    """A run with firmware/vs_vectors.c made for its model: those are the bytes check's vectors."""
    import hashlib
    data = (run / "model_int8.tflite").read_bytes()
    fw = run / "firmware"
    fw.mkdir(exist_ok=True)
    from verisparse.int8_runtime import litert
    shape = litert(data).get_input_details()[0]["shape"][1:]
    v = (np.arange(3 * int(np.prod(shape))) % 256 - 128).reshape(3, *shape)
    (fw / "vs_vectors.c").write_text(f"const int8_t vs_vectors[{v.size}] = {{\n    " + ", ".join(map(str, v.ravel()))
                                     + "\n};\n")
    (fw / "firmware.json").write_text(json.dumps({"source": {"sha256": hashlib.sha256(data).hexdigest()}}))
    try:
        out = tmp_path / "p.json"
        r = CliRunner().invoke(main, ["profile", str(run), str(run / "model_int8.tflite"), "--runtime", "litert",
                                      "--threads", "1", "--runs", "5", "--warmup", "0", "--compare",
                                      "--json", str(out)])
        assert r.exit_code == 0, r.output
        rec = json.loads(out.read_text())
        bc = rec["artifacts"][0]["bytes_check"]
        assert bc["vectors"] == 3 and "firmware" in bc["vectors_source"]
        assert bc["vectors_sha256"] == hashlib.sha256(v.astype(np.int8).tobytes()).hexdigest()
        assert "p50 latency" in r.output
        assert [a["kind"] for a in rec["artifacts"]] == ["tflite", "tflite"]  # model.onnx: no litert
    finally:
        for f in fw.iterdir():
            f.unlink()
        fw.rmdir()


@pytest.mark.parametrize("args,msg", [
    (["missing.tflite"], "does not exist"),
    (["{bad_tflite}"], "not a TFLite model"),
    (["{trunc_tflite}"], "LiteRT cannot load"),
    (["{bad_onnx}"], "onnxruntime cannot load"),
    (["{dir}"], "neither model_int8.tflite nor model.onnx"),
    (["{run}", "--runs", "0"], "--runs"),
    (["{run}", "--runtime", "tvm"], "--runtime"),
    (["{run}", "--threads", "0"], "--threads"),
    (["{tflite}", "--runtime", "onnxruntime"], "runs none of the given models"),
])
def test_profile_bad_input(args, msg, run, tmp_path):
    data = (run / "model_int8.tflite").read_bytes()
    paths = dict(bad_tflite=tmp_path / "bad.tflite", trunc_tflite=tmp_path / "trunc.tflite",
                 bad_onnx=tmp_path / "bad.onnx", dir=tmp_path / "empty", run=run, tflite=run / "model_int8.tflite")
    paths["bad_tflite"].write_bytes(b"\x00" * 64)
    paths["trunc_tflite"].write_bytes(data[:200])
    paths["bad_onnx"].write_bytes(b"not an onnx model at all")
    paths["dir"].mkdir()
    r, _ = light(["profile", *[a.format(**paths) for a in args]], tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len([x for x in r.stderr.splitlines() if x.startswith("error")]) <= 1


def test_all_runtimes_without_onnxruntime(run, tmp_path):
    """An image without onnxruntime: --runtime all profiles the .tflite and says why .onnx is skipped."""
    r, _ = light(["profile", str(run), "--runs", "3", "--warmup", "0", "--threads", "1", "--json",
                  str(tmp_path / "p.json")], tmp_path, extra_block="onnxruntime")
    assert r.returncode == 0, r.stderr
    assert "onnxruntime is not installed" in r.stderr
    assert [a["kind"] for a in json.loads((tmp_path / "p.json").read_text())["artifacts"]] == ["tflite"]
    r, _ = light(["profile", str(run / "model.onnx"), "--runtime", "onnxruntime"], tmp_path, extra_block="onnxruntime")
    assert r.returncode == 2 and "pip install onnxruntime" in r.stderr, r.stderr


def test_tflite_runtime_is_used_when_ai_edge_litert_is_absent(monkeypatch):
    from verisparse import int8_runtime
    fake = types.ModuleType("tflite_runtime")
    fake.interpreter = types.ModuleType("tflite_runtime.interpreter")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # None in sys.modules: ImportError
    monkeypatch.setitem(sys.modules, "tflite_runtime", fake)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake.interpreter)
    assert int8_runtime.litert_module() is fake.interpreter
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    with pytest.raises(Exception, match="pip install ai-edge-litert"):
        int8_runtime.litert_module()


def test_tflite_runtime_profile_in_subprocess(run, tmp_path):
    """Only tflite_runtime importable (a shim package that re-exports LiteRT's interpreter):
    profile runs on it."""
    shim = tmp_path / "shim" / "tflite_runtime"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("")
    (shim / "interpreter.py").write_text("from ai_edge_litert.interpreter import Interpreter, OpResolverType\n"
                                         "USED = True\n")
    code = ("import sys; import tflite_runtime.interpreter; sys.modules['ai_edge_litert'] = None; "
            "from verisparse.int8_runtime import litert_module; assert getattr(litert_module(), 'USED', False); "
            "sys.argv = ['verisparse', 'profile', sys.argv[1], '--runtime', 'litert-ref', '--runs', '3', "
            "'--warmup', '0', '--json', sys.argv[2]]; from verisparse.cli import main; main()")
    env = dict(os.environ, PYTHONPATH=f"{LIGHT}{os.pathsep}{shim.parent}")
    r = subprocess.run([sys.executable, "-c", code, str(run / "model_int8.tflite"), str(tmp_path / "p.json")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "p.json").read_text())["artifacts"][0]["rows"][0]["runtime"] == "litert-ref"


def test_emulation_detected_from_host_kernel(monkeypatch):
    from verisparse.profile import machine
    monkeypatch.setattr(machine.platform, "machine", lambda: "aarch64")
    files = {"/sys/devices/system/cpu/modalias": "cpu:type:x86,ven0000fam0006"}
    monkeypatch.setattr(machine, "_read", lambda p: files.get(str(p)))
    monkeypatch.delenv("QEMU_CPU", raising=False)
    pi = {"CPU implementer": "0x41", "CPU part": "0xd08", "Model": "Raspberry Pi 4 Model B"}
    assert "x86" in machine.emulation(pi)
    files.clear()
    assert machine.emulation(pi) is None  # a real Pi
    assert "x86" in machine.emulation({"vendor_id": "GenuineIntel"})
    monkeypatch.setattr(machine.platform, "machine", lambda: "x86_64")
    assert machine.emulation({"vendor_id": "GenuineIntel"}) is None


def test_throttling_warning(tmp_path, monkeypatch):
    from verisparse.profile import machine
    tool = tmp_path / "vcgencmd"
    tool.write_text("#!/bin/sh\necho throttled=0x50005\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    th = machine.throttling()
    assert th["now"] == ["under-voltage", "throttled"] and th["since_boot"] == ["under-voltage", "throttled"]
    (w,) = [w for w in machine.warnings(dict(throttling=th)) if "THROTTLED" in w]
    assert "0x50005" in w
    tool.write_text("#!/bin/sh\necho throttled=0x0\n")
    assert not machine.warnings(dict(throttling=machine.throttling(), governor="performance"))
    assert any("ondemand" in w for w in machine.warnings(dict(governor="ondemand")))


def test_bytes_compare_counts_lsb_and_class_changes():
    from verisparse.profile.bytes_check import compare
    ref = np.array([[10, 5, -3], [0, 1, 2]], np.int8)
    got = np.array([[10, 6, -3], [0, 3, 2]], np.int8)
    c = compare(ref, got)
    assert (c["differing_outputs"], c["differing_vectors"], c["max_lsb"], c["class_changes"]) == (2, 2, 2, 1)
    assert c["class_changes_at"] == [dict(vector=1, reference_class=2, got_class=1, reference_margin_lsb=1)]
    assert compare(ref, ref)["identical"] and compare(ref, ref)["class_changes_at"] == []


def test_bytes_line_says_how_close_a_changed_class_was():
    from verisparse.profile.bytes_check import compare
    from verisparse.profile.table import bytes_line
    ref = np.array([[44, 3, 44], [9, 1, 8], [5, 0, 0]], np.int8)
    tie = compare(ref, ref + np.array([[0, 0, 1], [0, 0, 0], [0, 0, 0]], np.int8))
    assert bytes_line(dict(runtimes={"litert/1": tie}), "litert", 1) == \
        "1/9 off <= 1 LSB, 1 class change (where the reference was a tie)"
    near = compare(ref, ref + np.array([[0, 0, 0], [-1, 0, 1], [0, 0, 0]], np.int8))
    assert bytes_line(dict(runtimes={"litert/1": near}), "litert", 1) == \
        "2/9 off <= 1 LSB, 1 class change (reference margin <= 1 LSB)"


def test_recorded_reference_bytes_from_another_machine(tmp_path):
    from verisparse.files import write_json
    from verisparse.profile.recorded import compare_with_recorded
    art = dict(sha256="m", bytes_check=dict(vectors_sha256="v", reference_outputs_sha256="r"))
    x86 = dict(model="Xeon", machine="x86_64", emulated=None)
    pi = dict(model="Raspberry Pi 4 Model B", machine="aarch64", emulated=None)
    write_json(tmp_path / "p.json", dict(machine=x86, created="t", artifacts=[art]))
    assert compare_with_recorded(tmp_path / "p.json", art, pi)["equal"] is True
    assert compare_with_recorded(tmp_path / "p.json", art, x86) is None  # the same machine
    other = dict(art, bytes_check=dict(art["bytes_check"], reference_outputs_sha256="s"))
    assert compare_with_recorded(tmp_path / "p.json", other, pi)["equal"] is False


def test_certificate_for_other_bytes_is_flagged(run, tmp_path):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cert = json.loads((copy / "certificate_model_int8.json").read_text())
    cert["artifact"]["sha256"] = "0" * 64
    (copy / "certificate_model_int8.json").write_text(json.dumps(cert))
    r = CliRunner().invoke(main, ["profile", str(copy), "--runtime", "litert-ref", "--runs", "2", "--warmup", "0"])
    assert r.exit_code == 0, r.output
    assert "does NOT cover this model" in r.output
    bc = json.loads((copy / "profile.json").read_text())["artifacts"][0]["bytes_check"]
    assert bc["certificate"]["covers_this_model"] is False and bc["certificate"]["runtimes_computing_it_exactly"] == []
