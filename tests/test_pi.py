"""The aarch64 proof (`make pi-check`): the light install and `verisparse profile` ran in an
arm64 Debian under qemu-user (a Raspberry Pi 4's userland), and its int8 output bytes equal
the x86 reference kernels' on the same test vectors."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTFS = Path(os.environ.get("PI_ROOTFS", Path.home() / ".cache/verisparse/pi-rootfs"))
RUN = REPO / os.environ.get("RUN", "runs/default")
RESULT = RUN / "pi-check" / "profile-aarch64.json"

pytestmark = [pytest.mark.slow, pytest.mark.pi,
              pytest.mark.skipif(not (ROOTFS / ".verisparse-complete").exists(),
                                 reason=f"no arm64 root filesystem at {ROOTFS}: run `make pi-check`")]


@pytest.fixture(scope="module")
def profile():
    assert RESULT.exists(), f"{RESULT} missing although the root filesystem exists: run `make pi-check`"
    return json.loads(RESULT.read_text())


def test_ran_on_aarch64_emulated(profile):
    m = profile["machine"]
    assert m["machine"] == "aarch64"
    assert m["emulated"], "qemu-user was not detected: the report would present emulated timings as real"
    assert any("emulated" in w for w in profile["warnings"])


def test_light_install_only(profile):
    names = {line.split("==")[0].lower() for line in (RESULT.parent / "pip-list.txt").read_text().split()}
    assert {"numpy", "click", "ai-edge-litert", "onnxruntime", "verisparse"} <= names
    assert not names & {"torch", "tensorflow", "tensorflow-cpu", "scipy", "tflite-micro", "onnx"}


def test_int8_bytes_equal_x86_reference_kernels(profile):
    from verisparse.int8_runtime import run_litert
    from verisparse.profile.artifacts import resolve
    from verisparse.profile.bytes_check import test_vectors

    model = RUN / "model_int8.tflite"
    data = model.read_bytes()
    (art,) = [a for a in profile["artifacts"] if a["kind"] == "tflite"]
    assert art["sha256"] == hashlib.sha256(data).hexdigest(), "the model changed since: run `make pi-check` again"
    bc = art["bytes_check"]
    (a,) = [a for a in resolve([RUN]) if a.kind == "tflite"]
    from verisparse.int8_runtime import litert
    d = litert(data).get_input_details()[0]
    vectors, _ = test_vectors(a, d["shape"][1:], *d["quantization"], n=bc["vectors"])
    assert hashlib.sha256(vectors.tobytes()).hexdigest() == bc["vectors_sha256"]
    x86 = run_litert(data, vectors, reference=True)
    arm = np.frombuffer(bytes.fromhex(bc["reference_outputs_hex"]), np.int8).reshape(x86.shape)
    assert np.array_equal(arm, x86), f"{int((arm != x86).sum())} int8 outputs differ from x86's reference kernels"
    # the profile compared itself with the x86 profile.json that pi-check carried along
    if "recorded" in bc:
        assert bc["recorded"]["equal"] and "x86" in bc["recorded"]["machine"], bc["recorded"]
    # XNNPACK on the emulated Cortex-A72 requantizes differently: at most 1 LSB off. That can
    # swap two classes the reference kernels tied or nearly tied, and the profile must say which
    # vectors, with the reference margins these x86 reference outputs give.
    for key, c in bc["runtimes"].items():
        assert c["max_lsb"] <= 1, (key, c)
        assert c["class_changes"] == len(c["class_changes_at"]), (key, c)
        for ch in c["class_changes_at"]:
            ref = x86[ch["vector"]]
            assert ch["reference_class"] == ref.argmax() != ch["got_class"], (key, ch)
            assert ch["reference_margin_lsb"] == int(ref.max()) - int(ref[ch["got_class"]]) <= 2 * c["max_lsb"], (key, ch)
