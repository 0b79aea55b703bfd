"""`verisparse firmware` on hostile input: the output folder (nothing of the user's is lost,
no half-written project), quantization parameters the C arithmetic cannot apply, malformed
graphs and resource limits, each one line and exit 2."""
import json
import os
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from verisparse.cli import main
from verisparse.errors import VeriSparseError
from verisparse.firmware import outdir
from verisparse.firmware.lower import lower
from verisparse.fixedpoint import checked_multipliers
from verisparse.tflite_graph import read_tflite


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_export):
    """A real run directory: cnn_4layer, one epoch on digits, exported (int8 in and out)."""
    return digits_export(tmp_path_factory.mktemp("fw-safety") / "run", "cnn_4layer", 0.05, epochs=1)


@pytest.fixture(scope="module")
def tflite(digits_run):
    return (digits_run / "model_int8.tflite").read_bytes()


def _cli(*args):
    r = CliRunner().invoke(main, list(map(str, args)))
    return r.exit_code, r.output


def _one_line_error(code, out, *needles):
    assert code == 2 and out.startswith("error: ") and "Traceback" not in out, out
    for n in needles:
        assert n in out, out


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- the output folder -------------------------------------------------------------------------

def test_out_folder_of_someone_elses_files_is_refused_and_left_alone(digits_run, tmp_path):
    out = tmp_path / "p"
    (out / "build").mkdir(parents=True)
    (out / "kernels").mkdir()
    (out / "build" / "important.bin").write_text("x")
    (out / "kernels" / "mine.c").write_text("y")
    before = _tree(out)
    code, text = _cli("firmware", digits_run, "--out", out)
    _one_line_error(code, text, "not a firmware project VeriSparse wrote", "new or empty folder")
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no staging folder left behind


def test_regenerating_touches_only_the_files_it_listed(digits_run, tmp_path):
    out = tmp_path / "fw"
    assert _cli("firmware", digits_run, "--board", "generic", "--out", out)[0] == 0
    manifest = json.loads((out / outdir.MANIFEST).read_text())["files"]
    assert {"model.c", "Makefile", "README.md", "kernels/vs_conv.c", "firmware.json"} <= set(manifest)
    (out / "build").mkdir()
    (out / "build" / "model.o").write_text("made by make")
    (out / "notes.txt").write_text("mine")
    (out / "kernels" / "mine.c").write_text("mine too")
    code, text = _cli("firmware", digits_run, "--board", "mps2-an386", "--out", out)
    assert code == 0, text
    assert not (out / "README.md").exists()  # the generic board's README, listed and unchanged: removed
    assert (out / "build" / "model.o").read_text() == "made by make" and (out / "notes.txt").read_text() == "mine"
    assert (out / "kernels" / "mine.c").read_text() == "mine too"
    assert "README.md" not in json.loads((out / outdir.MANIFEST).read_text())["files"]
    # a listed file the user changed is neither overwritten nor removed
    (out / "main.c").write_text((out / "main.c").read_text() + "/* my change */\n")
    before = _tree(out)
    code, text = _cli("firmware", digits_run, "--board", "generic", "--out", out)
    _one_line_error(code, text, "changed since", "main.c")
    assert _tree(out) == before
    # a file of the user's where the generator now wants to write one
    (out / "main.c").unlink()
    (out / "README.md").write_text("my readme")
    code, text = _cli("firmware", digits_run, "--board", "generic", "--out", out)
    _one_line_error(code, text, "README.md")
    assert (out / "README.md").read_text() == "my readme"


def test_out_that_is_a_file_or_a_damaged_manifest_is_one_line(digits_run, tmp_path):
    (tmp_path / "file").write_text("x")
    code, text = _cli("firmware", digits_run, "--out", tmp_path / "file")
    _one_line_error(code, text, "not a folder")
    code, text = _cli("firmware", digits_run, "--out", tmp_path / "file" / "fw")
    _one_line_error(code, text, "cannot write")
    (tmp_path / "fw").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "fw")
    code, text = _cli("firmware", digits_run, "--out", tmp_path / "link")
    assert code == 0 and (tmp_path / "fw" / outdir.MANIFEST).exists(), text
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / outdir.MANIFEST).write_text(json.dumps({"files": {"../file": "0" * 64}}))
    code, text = _cli("firmware", digits_run, "--out", tmp_path / "evil")
    _one_line_error(code, text, "damaged or not VeriSparse's")
    assert (tmp_path / "file").read_text() == "x"


def test_a_failed_write_leaves_no_half_written_project(digits_run, tmp_path, monkeypatch):
    from pathlib import Path
    real, calls = Path.write_bytes, []

    def failing(self, data):
        calls.append(self)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing)
    code, text = _cli("firmware", digits_run, "--out", tmp_path / "fw")
    _one_line_error(code, text, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_firmware_json_goes_with_its_project_and_keeps_measurements(digits_run, tmp_path):
    run_report, fw = digits_run / "firmware.json", digits_run / "firmware"
    assert _cli("firmware", digits_run)[0] == 0
    # what --run adds, taken on these very files
    r = json.loads((fw / "firmware.json").read_text())
    r["exactness"] = {"exact": True, "vectors": 200}
    outdir.replace_file(fw, "firmware.json", json.dumps(r).encode())
    run_report.write_text(json.dumps(r))
    # a project elsewhere gets its own report; the run's report describes run/firmware and stays
    code, text = _cli("firmware", digits_run, "--out", tmp_path / "other")
    assert code == 0, text
    assert json.loads(run_report.read_text()) == r
    assert json.loads((tmp_path / "other" / "firmware.json").read_text())["firmware_dir"] == str(tmp_path / "other")
    # regenerating the same files without --run keeps the measurements, in both reports
    assert _cli("firmware", digits_run)[0] == 0
    assert json.loads(run_report.read_text())["exactness"] == r["exactness"]
    assert json.loads((fw / "firmware.json").read_text())["exactness"] == r["exactness"]
    # other files (fewer vectors): the old measurements no longer describe them
    assert _cli("firmware", digits_run, "--vectors", 3)[0] == 0
    assert "exactness" not in json.loads(run_report.read_text())


# --- quantization parameters and malformed graphs ----------------------------------------------

def _patched(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new)


def _scale_of(data, tensor):
    return struct.pack("<If", 1, read_tflite(data).tensors[tensor].scale[0])


def test_multipliers_the_c_arithmetic_cannot_apply_are_refused(tflite, tmp_path):
    """Output scale 1e-30 made shift 83 (undefined in C, yet `--run` said identical to TFLM)."""
    path = tmp_path / "m.tflite"
    path.write_bytes(_patched(tflite, _scale_of(tflite, 14), struct.pack("<If", 1, 1e-30)))
    code, text = _cli("firmware", path, "--out", tmp_path / "fw")
    _one_line_error(code, text, "operator 3 (CONV_2D): requantization multiplier", "outside [0, 2^30)")
    assert not (tmp_path / "fw").exists()
    for m in (2.0 ** 30, 2.0 ** 30 * (1 - 2.0 ** -40), float("inf"), -1.0):  # the second rounds up to 2^30
        with pytest.raises(VeriSparseError, match="outside"):
            checked_multipliers([0.5, m], "x")
    q, s = checked_multipliers([2.0 ** 30 * 0.999, 0.5, 2.0 ** -40], "x")
    assert s.tolist() == [30, 0, 0] and q[2] == 0


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -0.5])
def test_scales_that_are_not_finite_and_positive_are_refused(tflite, tmp_path, scale):
    path = tmp_path / "m.tflite"
    path.write_bytes(_patched(tflite, _scale_of(tflite, 11), struct.pack("<If", 1, scale)))
    code, text = _cli("firmware", path, "--out", tmp_path / "fw")
    _one_line_error(code, text, "scales must be finite and positive")


def test_zero_points_outside_int8_are_refused(tflite, tmp_path):
    zp = int(read_tflite(tflite).tensors[15].zero_point[0])
    path = tmp_path / "m.tflite"
    path.write_bytes(_patched(tflite, struct.pack("<Iq", 1, zp), struct.pack("<Iq", 1, 300)))
    code, text = _cli("firmware", path, "--out", tmp_path / "fw")
    _one_line_error(code, text, "zero point 300", "outside [-128, 127]")


def test_int8_verifier_applies_the_same_checks(tflite):
    from verisparse.verify.int8_bounds import from_graph
    for tensor, scale, message in ((14, 1e-30, "requantization multiplier"), (11, float("nan"), "finite and positive")):
        data = _patched(tflite, _scale_of(tflite, tensor), struct.pack("<If", 1, scale))
        with pytest.raises(VeriSparseError, match=message):
            from_graph(read_tflite(data))
    g = read_tflite(tflite)
    g.operators[0].inputs[1] = -1
    with pytest.raises(VeriSparseError, match="weights input is missing"):
        from_graph(g)


@pytest.mark.parametrize("field,value,message", [
    ("stride_h", 0, "must be positive"), ("dilation_w", 0, "must be positive"), ("padding", "UNKNOWN_7", "padding"),
    ("stride_w", 70000, "inconsistent")])
def test_bad_window_options_are_refused(tflite, field, value, message):
    g = read_tflite(tflite)
    g.operators[0].options[field] = value
    with pytest.raises(VeriSparseError, match=message):
        lower(g)


def test_absent_inputs_are_refused(tflite):
    g = read_tflite(tflite)
    g.operators[1].inputs[1] = -1  # the weights: -1 must not pick the last tensor
    with pytest.raises(VeriSparseError, match="2 inputs and one output expected"):
        lower(g)


def test_names_that_are_not_utf8_make_clean_c(tflite, tmp_path):
    name = b"Conv2D_3"
    data = _patched(tflite, struct.pack("<I", len(name)) + name, struct.pack("<I", len(name)) + b"\xff\xfe*/ x;\n")
    path = tmp_path / os.fsdecode(b"m\xff\n*\\.tflite")
    path.write_bytes(data)
    code, text = _cli("firmware", path, "--out", tmp_path / "fw")
    assert code == 0, text
    first = (tmp_path / "fw" / "model.c").read_bytes().split(b"\n")[0]
    assert first.isascii() and first.count(b"*/") == 1 and first.endswith(b"Do not edit. */")


# --- resource limits ---------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value,message", [
    ("--max-ops", 3, "has 6 operators, more than --max-ops 3"),
    ("--max-tensor-elements", 100, "has 1000 elements [10, 1, 1, 100], more than --max-tensor-elements 100"),
    ("--max-macs", 1000, "needs 50664 multiply-accumulates per inference, more than --max-macs 1000"),
    ("--max-arena", 100, "needs 640 bytes of activation arena, more than --max-arena 100"),
    ("--max-macs", 0, "--max-macs must be at least 1"),
    ("--max-tensor-elements", 1 << 24, "--max-tensor-elements can be at most 8388608")])
def test_resource_limits_say_the_numbers(digits_run, tmp_path, flag, value, message):
    code, text = _cli("firmware", digits_run, "--out", tmp_path / "fw", flag, value)
    _one_line_error(code, text, message)
    assert not (tmp_path / "fw").exists()


def test_default_limits_take_mlperf_tiny_models():
    from pathlib import Path
    from verisparse.firmware.limits import Limits, check_graph
    models = sorted(Path("/work/shared/models/mlperf-tiny").glob("*.tflite"))
    if not models:
        pytest.skip("MLPerf Tiny models not on this machine")
    for m in models:
        check_graph(read_tflite(m), Limits())


# --- fuzzing -----------------------------------------------------------------------------------

def _offset_fields(data: bytes) -> np.ndarray:
    """Positions of 4-byte words that look like flatbuffer offsets (aligned, pointing forward into the file)."""
    words = np.frombuffer(data[: len(data) // 4 * 4], "<u4").astype(np.int64)
    pos = np.arange(len(words)) * 4
    return pos[(words > 0) & (words % 4 == 0) & (pos + words < len(data))]


def _mutants(data: bytes, n: int, seed: int):
    """n seeded mutations: bit flips, byte overwrites, truncations, and offsets redirected or broken."""
    rng = np.random.default_rng(seed)
    offsets = _offset_fields(data)
    for i in range(n):
        b = bytearray(data)
        kind = i % 4
        if kind == 0:
            for _ in range(rng.integers(1, 4)):
                p = int(rng.integers(len(b)))
                b[p] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            for _ in range(rng.integers(1, 4)):
                b[int(rng.integers(len(b)))] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.integers(256)]))
        elif kind == 2:
            b = b[: int(rng.integers(len(b)))]
        else:
            p = int(rng.choice(offsets))
            target = rng.choice([int(rng.choice(offsets)) - p, int(rng.integers(1 << 32)), len(b) - p - 2,
                                 int.from_bytes(b[p:p + 4], "little") + 4 * int(rng.integers(-3, 4))])
            b[p:p + 4] = struct.pack("<I", int(target) % (1 << 32))
        yield bytes(b)


@pytest.mark.slow
def test_fuzzed_models_generate_or_fail_cleanly_and_the_c_runs_clean(tflite, tmp_path):
    """A few hundred mutations of a real model through the generator: each one generates or
    raises VeriSparseError (never another exception, a hang or a crash), and the mutants that
    generate C compile and run under ASan/UBSan on the extremes and random inputs."""
    import shutil
    import signal

    from verisparse.firmware import toolchain
    from verisparse.firmware.generate import generate_firmware

    def hang(*_):
        raise TimeoutError("the generator took over 20 s on one mutant")

    old = signal.signal(signal.SIGALRM, hang)
    generated, refused = [], 0
    try:
        for i, data in enumerate(_mutants(tflite, 300, seed=9)):
            path, out = tmp_path / "m.tflite", tmp_path / f"fw{i}"
            path.write_bytes(data)
            signal.alarm(20)
            try:
                generate_firmware(path, "mps2-an386", out, vectors=16)
                generated.append(out)
            except VeriSparseError:
                refused += 1
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert refused > 50 and len(generated) > 20, (refused, len(generated))
    if shutil.which("gcc") is None:
        pytest.skip("needs a host C compiler for the sanitizer half")
    (tmp_path / "m.tflite").write_bytes(tflite)
    generate_firmware(tmp_path / "m.tflite", "mps2-an386", tmp_path / "orig", vectors=16)
    original = (tmp_path / "orig" / "model.c").read_bytes()
    changed = {(o / "model.c").read_bytes(): o for o in generated}
    changed.pop(original, None)  # mutants the generator reads as the original model add nothing here
    assert len(changed) >= 5
    for out in list(changed.values())[:5]:
        toolchain.run_host(out)  # raises on a failed build or a sanitizer report
