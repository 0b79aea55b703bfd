"""`verify --check` on hostile certificates: every field validated (exit 2, one line), every
claim re-derived from re-verified samples (a forgery exits 1), relative artifact paths
resolved from the certificate's folder, and the whole check under a time limit."""
import copy
import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from verisparse.cli import main


@pytest.fixture(scope="module")
def certified(tmp_path_factory, digits_export):
    """A short digits run, verified with CROWN: (run dir, certificate dict). The certificate
    has verified and falsified samples."""
    run = digits_export(tmp_path_factory.mktemp("check") / "run", "mlp_2layer", eps=0.05, epochs=3)
    r = _cli("verify", run / "model.onnx", "--n", 40, "--method", "crown", "--eps", 0.05)
    assert r.exit_code == 0, r.output
    cert = json.loads((run / "certificate.json").read_text())
    statuses = {s["status"] for s in cert["samples"]}
    assert {"verified", "falsified"} <= statuses, statuses
    return run, cert


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _check(run, cert, *args, name="forged.json"):
    """Write cert beside the run's artifact and --check it."""
    path = run / name
    path.write_text(json.dumps(cert))
    return _cli("verify", "--check", path, *args)


def _one_line_error(r, needle):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and needle in r.output, r.output
    assert r.output.strip().count("\n") == 0, r.output


def test_honest_certificate_checks_and_names_the_file(certified):
    run, cert = certified
    r = _check(run, cert)
    assert r.exit_code == 0, r.output
    digest = hashlib.sha256((run / "model.onnx").read_bytes()).hexdigest()
    assert str((run / "model.onnx").resolve()) in r.output and digest in r.output


def test_forged_summary_fails(certified):
    run, cert = certified
    forged = copy.deepcopy(cert)
    forged["summary"].update(verified_accuracy=0.999, passed=True, min_vra=0.99)
    r = _check(run, forged)
    assert r.exit_code == 1 and "FAIL" in r.output and "summary.verified_accuracy" in r.output, r.output


def test_gate_is_rederived_from_the_samples(certified):
    run, cert = certified
    forged = copy.deepcopy(cert)
    forged["summary"]["min_vra"] = 0.99  # passed stays true: the samples say otherwise
    r = _check(run, forged)
    assert r.exit_code == 1 and "summary.passed" in r.output and "below" in r.output, r.output


def test_status_upgraded_to_verified_fails(certified):
    run, cert = certified
    forged = copy.deepcopy(cert)
    rec = next(s for s in forged["samples"] if s["status"] == "falsified" and s["decided_by"] != "clean")
    rec.update(status="verified", decided_by="crown")
    from verisparse.verify.certificate import derived_summary
    forged["summary"] = dict(derived_summary(forged), seconds=1.0)
    r = _check(run, forged)
    assert r.exit_code == 1 and "FAIL" in r.output, r.output


def test_ladder_stage_must_hold(certified):
    run, cert = certified
    forged = copy.deepcopy(cert)
    crown = [s for s in forged["samples"] if s["status"] == "verified" and s["decided_by"] == "crown"]
    if not crown:
        pytest.skip("no CROWN-verified sample in this run")
    crown[0]["decided_by"] = "ibp"
    from verisparse.verify.certificate import derived_summary
    forged["summary"] = dict(derived_summary(forged), seconds=1.0)
    r = _check(run, forged)
    assert r.exit_code == 1 and "stage" in r.output, r.output


def test_falsified_claim_needs_a_counterexample(certified, tmp_path):
    run, cert = certified
    forged = copy.deepcopy(cert)
    rec = next(s for s in forged["samples"] if s["status"] == "unknown" or s["status"] == "verified")
    rec.update(status="falsified", decided_by="pgd")
    from verisparse.verify.certificate import derived_summary
    forged["summary"] = dict(derived_summary(forged), seconds=1.0)
    r = _check(run, forged)
    assert r.exit_code == 1 and "no counterexample" in r.output, r.output


@pytest.mark.parametrize("eps", [0, -5, 1e9, "0.1", None, True])
def test_eps_is_validated(certified, eps):
    run, cert = certified
    forged = copy.deepcopy(cert)
    forged["eps"] = eps
    forged.pop("counterexamples", None)
    _one_line_error(_check(run, forged), "eps")


def test_eps_nan_and_huge_time_limit(certified):
    run, cert = certified
    text = json.dumps(cert).replace('"eps": 0.05', '"eps": NaN')
    (run / "nan.json").write_text(text)
    _one_line_error(_cli("verify", "--check", run / "nan.json"), "eps")
    for limit in (1e9, 0, -1, "10"):
        _one_line_error(_check(run, dict(cert, time_limit_s=limit)), "time_limit_s")


def test_empty_certificate_needs_allow_empty(certified):
    run, cert = certified
    forged = copy.deepcopy(cert)
    forged["dataset"].update(n=0, samples_sha256=hashlib.sha256(b"").hexdigest())
    forged["samples"] = []
    forged.pop("counterexamples", None)
    from verisparse.verify.certificate import derived_summary
    forged["summary"] = dict(derived_summary(forged), seconds=0.0)
    _one_line_error(_check(run, forged), "--allow-empty")
    r = _check(run, forged, "--allow-empty")
    assert r.exit_code == 0 and "0/0" in r.output, r.output


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c.update(eps="0.1"), "eps"),
    (lambda c: c["artifact"].pop("sha256"), "artifact.sha256"),
    (lambda c: c["artifact"].pop("path"), "artifact.path"),
    (lambda c: c["samples"][0].pop("index"), "index"),
    (lambda c: c.update(samples="all verified"), "samples"),
    (lambda c: c["samples"][1].update(index=c["samples"][0]["index"]), "repeats"),
    (lambda c: c["samples"][0].update(index=10 ** 6), "index"),
    (lambda c: c["samples"][0].update(index=1.5), "index"),
    (lambda c: c["samples"][0].update(status="robust"), "status"),
    (lambda c: c.update(method="exact"), "method"),
    (lambda c: c.update(method_resolved="milp"), "method_resolved"),
    (lambda c: c.update(method_resolved="bogus", method="auto"), "method_resolved"),
    (lambda c: c["dataset"].update(n=-1), "dataset.n"),
    (lambda c: c.update(dataset=[]), "dataset"),
    (lambda c: c["summary"].update(min_vra=2), "min_vra"),
    (lambda c: c.update(counterexamples="../../etc/x.npz"), "counterexamples"),
])
def test_malformed_fields_exit_2_with_one_line(certified, mutate, needle):
    run, cert = certified
    forged = copy.deepcopy(cert)
    mutate(forged)
    _one_line_error(_check(run, forged), needle)


def test_not_a_certificate(tmp_path):
    for text in ("[]", "{", '{"format": "verisparse-certificate/1"}', "1" * 100 + "e999999"):
        p = tmp_path / "c.json"
        p.write_text(text)
        r = _cli("verify", "--check", p)
        assert r.exit_code == 2 and "Traceback" not in r.output, (text, r.output)


@pytest.mark.parametrize("npz, needle", [
    (b"not a zip at all", "counterexamples"),
    (dict(index=np.array([10 ** 6]), x=np.zeros((1, 1, 8, 8), np.float32)), "index"),
    (dict(index=np.array([0]), x=np.zeros((1, 3, 3), np.float32)), "shape"),
    (dict(index=np.array([0, 0]), x=np.zeros((2, 1, 8, 8), np.float32)), "index"),
    (dict(x=np.zeros((1, 1, 8, 8), np.float32)), "counterexamples"),
])
def test_malformed_counterexamples_exit_2(certified, tmp_path, npz, needle):
    run, cert = certified
    folder = tmp_path / "c"
    folder.mkdir()
    shutil.copyfile(run / "model.onnx", folder / "model.onnx")
    if isinstance(npz, bytes):
        (folder / "cex.npz").write_bytes(npz)
    else:
        np.savez(folder / "cex.npz", **npz)
    _one_line_error(_check(folder, dict(cert, counterexamples="cex.npz")), needle)


def test_relative_artifact_path_is_resolved_from_the_certificate(certified, tmp_path, monkeypatch):
    run, cert = certified
    assert cert["artifact"]["path"] == "model.onnx"  # written relative to the certificate's folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copyfile(run / "model.onnx", tmp_path / "model.onnx")  # the working directory's copy
    monkeypatch.chdir(tmp_path)
    forged = dict(cert)
    forged.pop("counterexamples", None)
    r = _check(elsewhere, forged)
    assert r.exit_code == 1 and "missing" in r.output and str(elsewhere / "model.onnx") in r.output, r.output


def test_check_time_limit(certified):
    run, cert = certified
    _one_line_error(_check(run, cert, "--check-time-limit", 0.001), "could not finish")


def test_file_dataset_named_by_a_certificate_is_not_opened(certified, tmp_path):
    run, cert = certified
    secret = tmp_path / "secret.csv"
    secret.write_text("0.5,1\n")
    forged = copy.deepcopy(cert)
    forged["dataset"]["name"] = f"csv:{secret}"
    r = _check(run, forged)
    _one_line_error(r, "--trust-artifact-paths")


def test_file_dataset_in_a_checkpoint_config_is_not_opened(certified, tmp_path):
    import torch
    run, _ = certified
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["config"]["dataset"] = f"npz:{tmp_path / 'secret.npz'}"
    (tmp_path / "r").mkdir()
    torch.save(state, tmp_path / "r" / "checkpoint.pt")
    r = _cli("verify", tmp_path / "r" / "checkpoint.pt", "--eps", 0.05, "--dataset", "digits")
    _one_line_error(r, "--trust-artifact-paths")
    r = _cli("verify", tmp_path / "r" / "checkpoint.pt", "--eps", 0.05, "--trust-artifact-paths")
    _one_line_error(r, "secret.npz")  # opened only now, and it is not there


def test_claimed_stage_must_belong_to_the_method(certified):
    run, cert = certified
    forged = copy.deepcopy(cert)
    forged.update(method="ibp", method_resolved="ibp")
    r = _check(run, forged)
    assert r.exit_code == 1 and "does not run" in r.output, r.output
