"""verisparse report: the page for a full run and a training-only run, offline-safe; the
eps sweep (monotone, equal to a plain verify at the trained eps); --compare; and a slow test
that opens the page in headless Chromium."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from verisparse.cli import main

EPS = 0.02
SWEEP = "0.005:0.05:0.005"   # includes the trained eps 0.02
ROOT = Path(__file__).resolve().parent.parent


def _cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r


@pytest.fixture(scope="module")
def train_only(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "train_only"
    r = _cli("train", "--dataset", "digits", "--arch", "mlp_2layer", "--eps", EPS, "--epochs", 2, "--out", out,
             "--quiet")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def full_run(train_only, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "full"
    shutil.copytree(train_only, out)
    assert _cli("export", out).exit_code == 0
    for art in ("model.onnx", "model_int8.tflite"):
        r = _cli("verify", out / art, "--n", 30, "--eps-sweep", SWEEP)
        assert r.exit_code in (0, 1), r.output
    return out


def _offline(text):
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*//""", text, re.I)
    assert "<script" not in text.lower() and "@import" not in text
    assert not re.search(r"url\(\s*['\"]?(?!#)", text)   # only in-page references such as url(#clip)


def test_report_full_run(full_run):
    r = _cli("report", full_run)
    assert r.exit_code == 0, r.output
    page = (full_run / "report.html").read_text()
    _offline(page)
    for heading in ("Training", "The model", "Export", "Robustness", "Firmware", "Provenance",
                    "Verified accuracy against eps", "Certified margins", "Per class", "largest certified radius"):
        assert heading in page, heading
    assert page.count("<svg") >= 8
    assert "firmware.json" in page and "missing" in page      # firmware stage not run: said so
    sha = json.loads((full_run / "certificate.json").read_text())["artifact"]["sha256"]
    assert sha in page


def test_report_training_only(train_only, tmp_path):
    out = tmp_path / "r.html"
    r = _cli("report", train_only, "--out", out)
    assert r.exit_code == 0, r.output
    page = out.read_text()
    _offline(page)
    assert "accuracy per epoch" in page
    assert "export.json is missing" in page and "No certificate" in page
    assert not (train_only / "report.html").exists()


def test_report_bad_input_is_one_line(tmp_path):
    r = _cli("report", tmp_path / "nope")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    r = _cli("report", "--compare", tmp_path)
    assert r.exit_code == 2


def test_eps_sweep_monotone_and_equals_plain_verify(full_run, tmp_path):
    for cert_name in ("certificate.json", "certificate_model_int8.json"):
        cert = json.loads((full_run / cert_name).read_text())
        sweep = cert["eps_sweep"]
        eps = [p["eps"] for p in sweep]
        assert eps == sorted(eps) and EPS in eps and len(eps) == 10
        acc = [p["verified_accuracy"] for p in sweep]
        assert all(a >= b for a, b in zip(acc, acc[1:])), acc
        for p in sweep:
            assert p["verified"] + p["falsified"] + p["unknown"] == 30
        radius = cert["eps_sweep_certified_radius"]
        for p in sweep:  # the per-sample radii agree with the curve
            assert sum(r >= p["eps"] for r in radius) == p["verified"]
        point = next(p for p in sweep if p["eps"] == EPS)
        s = cert["summary"]
        assert (point["verified"], point["falsified"], point["unknown"]) == (s["verified"], s["falsified"], s["unknown"])
    # and the point equals a separate plain verify at that eps
    plain = tmp_path / "plain.json"
    r = _cli("verify", full_run / "model.onnx", "--n", 30, "--eps", EPS, "--report", plain)
    assert r.exit_code in (0, 1), r.output
    s = json.loads(plain.read_text())["summary"]
    point = next(p for p in json.loads((full_run / "certificate.json").read_text())["eps_sweep"] if p["eps"] == EPS)
    assert (point["verified"], point["falsified"], point["unknown"]) == (s["verified"], s["falsified"], s["unknown"])


def test_eps_sweep_bad_spec_exits_2(full_run):
    for bad in ("0.1:0.05:0.01", "a:b:c", "0:0.1:0.01", "0.01:0.1:0"):
        r = _cli("verify", full_run / "model.onnx", "--n", 5, "--eps-sweep", bad, "--report",
                 full_run.parent / "x.json")
        assert r.exit_code == 2, (bad, r.output)


def test_compare(full_run, train_only, tmp_path):
    out = tmp_path / "compare.html"
    r = _cli("report", "--compare", full_run, train_only, "--out", out)
    assert r.exit_code == 0, r.output
    page = out.read_text()
    _offline(page)
    assert "full" in page and "train_only" in page and page.count("<svg") >= 2


def _chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
def test_report_in_headless_chromium(full_run, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; `make toolchain` installs it)")
    run = tmp_path / "full"
    shutil.copytree(full_run, run)
    # the firmware section too: built and run in QEMU where the Arm toolchain is installed
    built = shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")
    r = _cli("firmware", run, "--board", "mps2-an386", "--out", run / "firmware", *(["--run"] if built else []))
    assert r.exit_code == 0, r.output
    assert _cli("report", run).exit_code == 0
    page = (run / "report.html").resolve()
    assert "firmware.json is missing" not in page.read_text()
    shot = tmp_path / "report.png"
    common = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
              f"--user-data-dir={tmp_path / 'profile'}"]
    p = subprocess.run(common + ["--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                                 "--window-size=1200,3000", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert shot.is_file(), p.stderr[-2000:]
    errors = [line for line in p.stderr.splitlines() if "Uncaught" in line or "ERROR:CONSOLE" in line]
    assert not errors, errors
    dom = subprocess.run(common + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "Robustness" in dom.stdout and "<svg" in dom.stdout
    from PIL import Image
    img = Image.open(shot).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot looks blank"
    if os.environ.get("VERISPARSE_UPDATE_SCREENSHOT"):   # the README's screenshot, made by this browser
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "report.png")
