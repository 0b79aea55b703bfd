"""Sharded verification: `verify --shard I/N` slices, `verify --merge` joins them into the
unsharded run's certificate, and refuses shards that are not exactly one run's slices."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from verisparse.cli import main
from verisparse.verify.certificate import derived_summary
from verisparse.verify.shard import parse, slice_of

N = 200  # four chunks of 50 on the small model: 3 shards get 1, 1 and 2 chunks
ARGS = ("--n", N, "--eps", 0.1, "--method", "crown", "--device", "cpu")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits_export):
    return digits_export(tmp_path_factory.mktemp("shard") / "mlp", "mlp_2layer", eps=0.05, epochs=3)


@pytest.fixture(scope="module")
def whole(run_dir, tmp_path_factory):
    """The unsharded certificate."""
    path = tmp_path_factory.mktemp("whole") / "cert.json"
    r = _verify(run_dir / "model.onnx", *ARGS, "--report", path)
    assert r.exit_code == 0, r.output
    return json.loads(path.read_text())


def _verify(*args):
    return CliRunner().invoke(main, ["verify", *map(str, args)])


def _shards(run_dir, tmp_path, n, *extra):
    paths = []
    for i in range(n):
        p = tmp_path / f"shard-{i}.json"
        r = _verify(run_dir / "model.onnx", *ARGS, "--shard", f"{i}/{n}", "--report", p, *extra)
        assert r.exit_code == 0, r.output
        assert f"shard {i}/{n}" in r.output
        paths.append(p)
    return paths


def _verdicts(cert):
    return [(r["index"], r["label"], r["status"], r["decided_by"], r["margin_lower"]) for r in cert["samples"]]


def _summary(cert):
    return {k: v for k, v in cert["summary"].items() if k != "seconds"}


def test_parse_and_slices():
    assert parse("0/1") == (0, 1) and parse("2/3") == (2, 3) and parse("auto") == "auto"
    from verisparse.errors import VeriSparseError
    for bad in ("3/3", "1/0", "-1/2", "1", "a/b", "1/2/3", ""):
        with pytest.raises(VeriSparseError):
            parse(bad)
    for total, chunk, n in ((200, 50, 3), (7, 50, 2), (1000, 50, 7), (0, 50, 2), (101, 1, 4)):
        parts = [slice_of(total, chunk, i, n) for i in range(n)]
        assert parts[0][0] == 0 and parts[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert all(s % chunk == 0 or s == total for s, _ in parts)


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3])
def test_merged_shards_equal_the_unsharded_run_and_check(run_dir, whole, tmp_path, n):
    paths = _shards(run_dir, tmp_path, n)
    shard0 = json.loads(paths[0].read_text())
    assert shard0["shard"]["index"] == 0 and shard0["shard"]["count"] == n and shard0["shard"]["total"] == N
    assert [r["index"] for r in shard0["samples"]] == list(range(*slice_of(N, shard0["shard"]["chunk"], 0, n)))
    out = tmp_path / "merged" / "cert.json"
    out.parent.mkdir()
    r = _verify("--merge", *reversed(paths), "--report", out)  # order of the files does not matter
    assert r.exit_code == 0, r.output
    merged = json.loads(out.read_text())
    assert _verdicts(merged) == _verdicts(whole)
    assert _summary(merged) == _summary(whole)
    assert merged["dataset"] == whole["dataset"] and merged["artifact"]["sha256"] == whole["artifact"]["sha256"]
    assert "shard" not in merged and merged["merged_from"]["shards"] == n
    falsified = [s for s in whole["samples"] if s["status"] == "falsified"]
    assert falsified and merged.get("counterexamples")  # counterexamples travel with the merge
    r = _verify("--check", out)
    assert r.exit_code == 0, r.output
    # a shard certificate re-checks on its own, too
    assert _verify("--check", paths[-1]).exit_code == 0


@pytest.mark.slow
def test_merge_gates_on_min_vra(run_dir, whole, tmp_path):
    paths = _shards(run_dir, tmp_path, 2)
    vra = whole["summary"]["verified_accuracy"]
    r = _verify("--merge", *paths, "--report", tmp_path / "ok.json", "--min-vra", vra)
    assert r.exit_code == 0, r.output
    r = _verify("--merge", *paths, "--report", tmp_path / "high.json", "--min-vra", min(1.0, vra + 0.01))
    assert r.exit_code == 1 and "FAIL" in r.output
    assert _verify("--check", tmp_path / "high.json").exit_code == 1  # the gate is part of the claim


@pytest.fixture(scope="module")
def three(run_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("three")
    return tmp, _shards(run_dir, tmp, 3)


def _edited(tmp, src, change, name):
    cert = json.loads(src.read_text())
    change(cert)
    p = tmp / name
    p.write_text(json.dumps(cert))
    if cert.get("counterexamples"):
        shutil.copyfile(src.with_name(cert["counterexamples"]), p.with_name(cert["counterexamples"]))
    return p


def _refused(paths, tmp, *words):
    r = _verify("--merge", *paths, "--report", tmp / "never.json")
    assert r.exit_code == 2, r.output
    assert all(w in r.output for w in words), r.output
    assert not (tmp / "never.json").exists()
    return r


@pytest.mark.slow
def test_merge_refuses_overlap_gap_and_mismatch(run_dir, three, tmp_path):
    tmp, (a, b, c) = three
    _refused([a, b, b, c], tmp_path, "given twice")
    _refused([a, c], tmp_path, "in no shard")  # gap: shard 1 missing
    _refused([a, b], tmp_path, "in no shard")  # the tail missing
    two = _shards(run_dir, tmp_path, 2)
    _refused([two[0], b, c], tmp_path, "shard.count")  # slices of two different splits
    # shard 1 grown over shard 0's samples, consistent in itself
    first = json.loads(a.read_text())

    def grow(d):
        d["samples"] = first["samples"] + d["samples"]
        d["shard"]["start"] = 0
        d["summary"] = derived_summary(d)
    _refused([a, _edited(tmp_path, b, grow, "overlap.json"), c], tmp_path, "overlaps")
    other = "0" * 64
    for field, change in (("artifact.sha256", lambda d: d["artifact"].update(sha256=other)),
                          ("eps", lambda d: d.update(eps=0.2)),
                          ("method", lambda d: d.update(method="ibp", method_resolved="ibp")),
                          ("dataset", lambda d: d["dataset"].update(samples_sha256=other)),
                          ("time_limit_s", lambda d: d.update(time_limit_s=3.0)),
                          ("device", lambda d: d.update(device="cuda"))):
        _refused([a, _edited(tmp_path, b, change, f"{field}.json"), c], tmp_path, field, "differs")


@pytest.mark.slow
def test_merge_refuses_malformed_and_hostile_shards(run_dir, three, tmp_path):
    tmp, (a, b, c) = three
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    _refused([a, garbage, c], tmp_path, "not a JSON certificate")
    (tmp_path / "list.json").write_text("[1, 2]")
    _refused([a, tmp_path / "list.json", c], tmp_path, "not a verisparse-certificate")
    _refused([a, tmp_path / "absent.json", c], tmp_path, "not found")
    whole_like = _edited(tmp_path, b, lambda d: d.pop("shard"), "noshard.json")
    _refused([a, whole_like, c], tmp_path, "samples")  # a shard's records without its shard record
    hostile = (
        ("index.json", lambda d: d["shard"].update(index=7), "shard.index"),
        ("total.json", lambda d: d["shard"].update(total=10 ** 9), "shard.total"),
        ("records.json", lambda d: d["samples"].pop(), "samples"),
        ("stray.json", lambda d: d["samples"][0].update(index=0), "samples[0].index"),
        ("status.json", lambda d: d["samples"][0].update(status="maybe"), "samples[0].status"),
        ("seconds.json", lambda d: d["samples"][0].update(seconds="soon"), "seconds"),
        ("slice.json", lambda d: d["shard"].update(index=2), "given twice"),
    )
    for name, change, word in hostile:
        _refused([a, _edited(tmp_path, b, change, name), c], tmp_path, word)
    # a verdict changed without its summary
    cert_b = json.loads(b.read_text())
    k = next(i for i, r in enumerate(cert_b["samples"]) if r["status"] != "verified")
    _refused([a, _edited(tmp_path, b, lambda d: d["samples"][k].update(status="verified", decided_by="crown"),
                         "claim.json"), c], tmp_path, "summary")


def test_bad_shard_values_exit_2(tmp_path):
    for bad in ("3/3", "x", "0/0"):
        r = _verify(tmp_path / "model.onnx", "--shard", bad)
        assert r.exit_code == 2, r.output
    r = _verify(tmp_path / "model.onnx", "--shard", "auto")  # not under torchrun
    assert r.exit_code == 2 and "torchrun" in r.output
    assert _verify("--merge", tmp_path / "a.json").exit_code == 2  # no --report
    assert _verify("--merge", "--report", tmp_path / "c.json").exit_code == 2  # no shards


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_merge_into_the_unsharded_certificate(run_dir, whole, tmp_path):
    out = tmp_path / "cert.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "verisparse", "verify",
                        str(run_dir / "model.onnx"), "--samples", str(N), *map(str, ARGS[2:]), "--shard", "auto",
                        "--report", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    merged = json.loads(out.read_text())
    assert _verdicts(merged) == _verdicts(whole) and _summary(merged) == _summary(whole)
    assert merged["merged_from"]["shards"] == 2
    assert _verify("--check", out).exit_code == 0
