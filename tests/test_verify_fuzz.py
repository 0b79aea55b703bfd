"""Fuzzing `verify`'s artifact loaders: seeded bit flips, byte overwrites and truncations of
a real model.onnx and model_int8.tflite, each loaded and verified (IBP, a few samples) under
a time cap. Every outcome must be a result or a VeriSparseError: never another exception,
never a hang. Also hostile quantization scales in an otherwise valid TFLite file."""
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from verisparse.cli import main
from verisparse.errors import VeriSparseError
from verisparse.verify.artifact import load_artifact
from verisparse.verify.deadline import deadline
from verisparse.verify.samples import load_split

CASES = 250  # per file and seed
CAP_S = 30.0  # per case; an honest case takes well under a second


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits_export):
    return digits_export(tmp_path_factory.mktemp("fuzz") / "run", "cnn_4layer", eps=0.05, epochs=1)


def _mutate(data, rng):
    data = bytearray(data)
    kind = rng.integers(3)
    if kind == 0:  # bit flips
        for _ in range(rng.integers(1, 9)):
            k = rng.integers(len(data))
            data[k] ^= 1 << int(rng.integers(8))
        return bytes(data), "flip"
    if kind == 1:  # overwrite a few bytes with random or boundary values
        k = int(rng.integers(len(data)))
        fill = rng.choice([0x00, 0xff, 0x7f, 0x80, int(rng.integers(256))])
        width = int(rng.integers(1, 9))
        data[k:k + width] = bytes([fill if rng.random() < 0.5 else int(rng.integers(256)) for _ in range(width)])
        return bytes(data[:len(data)]), "overwrite"
    return bytes(data[:int(rng.integers(len(data)))]), "truncate"


def _fuzz(run, tmp_path, name, seed):
    original = (run / name).read_bytes()
    rng = np.random.default_rng(seed)
    outcomes = {"result": 0, "error": 0}
    for case in range(CASES):
        data, kind = _mutate(original, rng)
        path = tmp_path / name  # no run directory around it: the file alone
        path.write_bytes(data)
        timeout = AssertionError(f"case {case} ({kind}) ran past {CAP_S} s")
        try:
            with deadline(CAP_S, timeout):
                art = load_artifact(path)
                _, x, y = load_split(art, "digits", 0, None, "test", 4)
                results = art.verify(x, y, 0.05, "ibp")
            assert [r.status in ("verified", "falsified", "unknown") for r in results] == [True] * 4
            outcomes["result"] += 1
        except VeriSparseError:
            outcomes["error"] += 1
        except AssertionError:
            raise
        except BaseException as e:  # noqa: B036 - anything else is the bug this test looks for
            raise AssertionError(f"case {case} ({kind}) of {name} raised {type(e).__name__}: {e}") from e
    assert outcomes["result"] > 0 and outcomes["error"] > 0, outcomes  # the fuzzer reaches both
    return outcomes


@pytest.mark.slow
def test_fuzz_onnx(run, tmp_path):
    _fuzz(run, tmp_path, "model.onnx", seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [12])  # reaches LiteRT prepare errors and an unquantized int8 tensor
def test_fuzz_tflite(run, tmp_path, seed):
    _fuzz(run, tmp_path, "model_int8.tflite", seed)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -1 / 255])
def test_hostile_tflite_scales_exit_2(run, tmp_path, scale):
    data = (run / "model_int8.tflite").read_bytes()
    old = struct.pack("<f", np.float32(1 / 255))  # the input scale (pixels in [0, 1])
    assert old in data
    p = tmp_path / "model_int8.tflite"
    p.write_bytes(data.replace(old, struct.pack("<f", scale)))
    r = CliRunner().invoke(main, ["verify", str(p), "--eps", "0.05", "--dataset", "digits", "--n", "4"])
    assert r.exit_code == 2 and "Traceback" not in r.output and "scale" in r.output, r.output
