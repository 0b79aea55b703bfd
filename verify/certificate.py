"""cert.json, its JUnit twin for CI, the terminal table, and re-checking a certificate.

A certificate binds a result to exact bytes: the artifact's sha256 and the sha256 of the
dataset split it was computed on. Counterexamples go beside it in an .npz (they are images,
not JSON material) so `--check` can replay them on the artifact's runtime.
"""
from __future__ import annotations

import math
import os
import platform
import re
import time
import zipfile
import xml.etree.ElementTree as ET
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from verisparse.errors import VeriSparseError
from verisparse.files import atomic_write, read_json, write_json

FORMAT = "verisparse-certificate/1"


def tool_version():
    try:
        return version("verisparse")
    except PackageNotFoundError:
        return "unknown"


def summarize(results, min_vra):
    n = len(results)
    counts = Counter(r.status for r in results)
    by_stage = Counter(r.decided_by for r in results if r.status == "verified")
    # the cascade's ladder: what each stage had verified by the time it finished
    ladder, acc = {}, 0
    for stage in ("ibp", "crown", "alpha-crown", "int8-ibp", "int8-crown", "bab", "int8-bab", "milp"):
        if stage in by_stage:
            acc += by_stage[stage]
            ladder[stage] = acc / n
    vra = counts["verified"] / n if n else 0.0
    return dict(n=n, verified=counts["verified"], falsified=counts["falsified"], unknown=counts["unknown"],
                clean_correct=sum(1 for r in results if r.decided_by not in ("clean", "time-budget")),
                verified_accuracy=vra, attack_robust_accuracy=(n - counts["falsified"]) / n if n else 0.0,
                exact=counts["unknown"] == 0, ladder=ladder, min_vra=min_vra, passed=vra >= min_vra,
                seconds=round(sum(r.seconds for r in results), 3))


def build(artifact, dataset_info, eps, method, time_limit, results, min_vra, wall_seconds):
    """kernels (int8 artifacts): whose arithmetic the verdicts cover (verify.int8_bounds.KERNELS)."""
    covered = {"kernels": artifact.extra["kernels"]} if artifact.kind == "tflite" else {}
    return dict(**covered,
        format=FORMAT,
        tool=dict(name="verisparse", version=tool_version(), python=platform.python_version()),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        artifact=dict(path=str(artifact.path), kind=artifact.kind, sha256=artifact.sha256),
        dataset=dataset_info, eps=eps, method=method, time_limit_s=time_limit,
        summary=summarize(results, min_vra), wall_seconds=round(wall_seconds, 3),
        samples=[r.record() for r in results],
    )


def counterexample_path(report_path):
    p = Path(report_path)
    return p.with_name(p.stem + "_counterexamples.npz")


def write(report_path, cert, results):
    """The artifact's path is stored relative to the certificate's folder when the artifact
    lies under it, so the pair can move together; `--check` resolves it from there."""
    write_with_counterexamples(report_path, cert, {r.index: r.counterexample for r in results
                                                   if r.counterexample is not None})


def write_with_counterexamples(report_path, cert, counterexamples):
    """write(), with the counterexamples as {sample index: input}."""
    art_path = Path(cert["artifact"]["path"]).absolute()
    folder = Path(report_path).absolute().parent
    if art_path.is_relative_to(folder):
        cert = dict(cert, artifact=dict(cert["artifact"], path=os.path.relpath(art_path, folder)))
    cex = sorted(counterexamples.items(), key=lambda kv: kv[0])
    if cex:
        path = counterexample_path(report_path)
        idx = np.array([i for i, _ in cex], dtype=np.int64)
        xs = np.stack([np.asarray(x, dtype=np.float32) for _, x in cex])
        atomic_write(path, lambda f: np.savez_compressed(f, index=idx, x=xs))
        cert["counterexamples"] = path.name
    write_json(report_path, cert)


def read(path):
    try:
        cert = read_json(path)
    except FileNotFoundError:
        raise VeriSparseError(f"certificate {path} not found") from None
    except IsADirectoryError:
        raise VeriSparseError(f"certificate {path} is a directory; pass the certificate's .json file") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise VeriSparseError(f"{path} is not a JSON certificate ({str(e)[:200]})") from None
    need = ("artifact", "dataset", "eps", "method", "samples", "summary")
    if not isinstance(cert, dict) or cert.get("format") != FORMAT or any(k not in cert for k in need):
        raise VeriSparseError(f"{path} is not a {FORMAT} certificate")
    return cert


# --- validating a certificate a user brings: every field it relies on, before any work --

METHODS = ("ibp", "crown", "alpha-crown", "bab", "milp", "auto")
KERNELS = ("reference", "xnnpack", "all")  # verify.int8_bounds.KERNELS (not imported: it pulls in torch)
STATUSES = ("verified", "falsified", "unknown")
STAGES = ("clean", "ibp", "crown", "alpha-crown", "bab", "milp", "int8-ibp", "int8-crown", "int8-bab", "pgd",
          "int8-search", "time-budget")
MAX_TIME_LIMIT_S = 3600.0  # per sample; a larger claim is a forged or broken certificate
MAX_SHARDS = 100_000
_SHA256 = re.compile(r"[0-9a-f]{64}")


def validate(cert, where, allow_empty=False):
    """Raise VeriSparseError naming the first malformed field. Checks types and ranges only;
    whether the claims hold is for the re-check."""
    def bad(field, what):
        raise VeriSparseError(f"{where}: {field} {what}; the certificate is malformed (re-create it with "
                              "`verisparse verify`)")

    def mapping(v, field):
        if not isinstance(v, dict):
            bad(field, "must be an object")
        return v

    def integer(v, field, lo, hi=None):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            bad(field, f"must be an integer in [{lo}, {'...' if hi is None else hi}]; got {_short(v)}")
        return v

    def number(v, field):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            bad(field, f"must be a finite number; got {_short(v)}")
        return float(v)

    def text(v, field, choices=None):
        if not isinstance(v, str) or not v or (choices is not None and v not in choices):
            bad(field, f"must be {'one of ' + ', '.join(choices) if choices else 'a non-empty string'}; "
                       f"got {_short(v)}")
        return v

    def digest(v, field):
        if not isinstance(v, str) or not _SHA256.fullmatch(v):
            bad(field, "must be a sha256 (64 lowercase hex digits)")
        return v

    art = mapping(cert["artifact"], "artifact")
    text(art.get("path"), "artifact.path")
    if "\0" in art["path"]:
        bad("artifact.path", "holds a NUL character")
    kind = text(art.get("kind"), "artifact.kind", ("onnx", "tflite", "checkpoint"))
    digest(art.get("sha256"), "artifact.sha256")
    d = mapping(cert["dataset"], "dataset")
    text(d.get("name"), "dataset.name")
    text(d.get("split"), "dataset.split", ("test", "train"))
    integer(d.get("seed", 0), "dataset.seed", 0, 2 ** 63 - 1)
    size = integer(d.get("split_size"), "dataset.split_size", 0)
    n = integer(d.get("n"), "dataset.n", 0, size)
    if n == 0 and not allow_empty:
        bad("dataset.n", "is 0: the certificate covers no sample (pass --allow-empty to accept that)")
    digest(d.get("split_sha256"), "dataset.split_sha256")
    digest(d.get("samples_sha256"), "dataset.samples_sha256")
    eps = number(cert["eps"], "eps")
    if not 0 < eps <= 1:
        bad("eps", f"must be in (0, 1] (pixel space); got {eps}")
    method = text(cert["method"], "method", METHODS)
    resolved = text(cert.get("method_resolved", method), "method_resolved", METHODS)
    if method != "auto" and resolved != method:
        bad("method_resolved", f"is {resolved} but method is {method}")
    if "kernels" in cert:
        text(cert["kernels"], "kernels", KERNELS)
        if kind != "tflite":
            bad("kernels", f"names int8 kernels but the artifact is {kind}")
    limit = number(cert.get("time_limit_s"), "time_limit_s")
    if not 0 < limit <= MAX_TIME_LIMIT_S:
        bad("time_limit_s", f"must be in (0, {MAX_TIME_LIMIT_S:g}] seconds; got {limit}")
    samples = cert["samples"]
    first, stop = 0, n
    if "shard" in cert:  # a slice of the samples (verify.shard): its records are that slice's
        sh = mapping(cert["shard"], "shard")
        count = integer(sh.get("count"), "shard.count", 1, MAX_SHARDS)
        integer(sh.get("index"), "shard.index", 0, count - 1)
        integer(sh.get("total"), "shard.total", n, n)
        integer(sh.get("chunk"), "shard.chunk", 1)
        first = integer(sh.get("start"), "shard.start", 0, n)
        stop = integer(sh.get("stop"), "shard.stop", first, n)
    if not isinstance(samples, list) or len(samples) != stop - first:
        bad("samples", f"must be a list of {stop - first} records" + ("" if "shard" in cert else " (dataset.n)"))
    seen = set()
    for k, r in enumerate(samples):
        mapping(r, f"samples[{k}]")
        i = integer(r.get("index"), f"samples[{k}].index", first, stop - 1)
        if i in seen:
            bad(f"samples[{k}].index", f"repeats sample {i}")
        seen.add(i)
        integer(r.get("label"), f"samples[{k}].label", 0)
        text(r.get("status"), f"samples[{k}].status", STATUSES)
        text(r.get("decided_by"), f"samples[{k}].decided_by", STAGES)
        note = r.get("note")
        if note is not None and not (isinstance(note, str) and len(note) <= 300 and note.isprintable()):
            bad(f"samples[{k}].note", "must be one printable line of at most 300 characters")
    s = mapping(cert["summary"], "summary")
    number(s.get("min_vra"), "summary.min_vra")
    if not 0 <= s["min_vra"] <= 1:
        bad("summary.min_vra", f"must be a fraction in [0, 1]; got {s['min_vra']}")
    name = cert.get("counterexamples")
    if name is not None and (not isinstance(name, str) or Path(name).name != name or not name.endswith(".npz")):
        bad("counterexamples", "must be the name of an .npz file beside the certificate")
    return cert


def _short(v):
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def derived_summary(cert):
    """The summary as it follows from the certificate's own sample records."""
    recs = sorted(cert["samples"], key=lambda r: r["index"])
    return summarize([_Claim(r["status"], r["decided_by"]) for r in recs], cert["summary"]["min_vra"])


class _Claim:
    seconds = 0.0

    def __init__(self, status, decided_by):
        self.status, self.decided_by = status, decided_by


def summary_mismatches(claimed, derived):
    """Fields of the claimed summary that differ from the derived one (timings aside)."""
    return [f"summary.{k} is {_short(claimed.get(k))} but the samples give {_short(v)}"
            for k, v in derived.items() if k != "seconds" and not _same(claimed.get(k), v)]


def _same(claimed, derived):
    if isinstance(derived, dict):
        return isinstance(claimed, dict) and claimed.keys() == derived.keys() and \
            all(_same(claimed[k], v) for k, v in derived.items())
    if isinstance(derived, bool) or isinstance(derived, int):
        return type(claimed) is type(derived) and claimed == derived
    return isinstance(claimed, (int, float)) and not isinstance(claimed, bool) and \
        math.isclose(claimed, derived, rel_tol=1e-9, abs_tol=1e-12)


def read_counterexamples(cert_path, cert, in_shape):
    """{sample index: float32 input} from the .npz beside the certificate; a file that is not
    an npz, or arrays of the wrong type, shape or size raise VeriSparseError."""
    name = cert.get("counterexamples")
    if not name:
        return {}
    p = Path(cert_path).with_name(Path(name).name)
    n, per = cert["dataset"]["n"], int(np.prod(in_shape))
    limit = (n + 1) * per * 8 + 4096  # the largest honest array, stored as float64, plus its header
    try:
        with zipfile.ZipFile(p) as zf:
            big = [i.filename for i in zf.infolist() if i.file_size > limit]
        if big:
            raise VeriSparseError(f"counterexamples {p}: {big[0]} is larger than {n} inputs of shape "
                                  f"{tuple(in_shape)} can be")
        with np.load(p, allow_pickle=False) as z:
            idx, xs = z["index"], z["x"]
    except FileNotFoundError:
        raise VeriSparseError(f"counterexamples {p} named by the certificate not found") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise VeriSparseError(f"cannot read the counterexamples {p}: {type(e).__name__}: {str(e)[:200]}") from None
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or len(np.unique(idx)) != len(idx) or \
            (len(idx) and (idx.min() < 0 or idx.max() >= n)):
        raise VeriSparseError(f"counterexamples {p}: index must be distinct sample numbers in [0, {n - 1}]")
    if xs.dtype.kind != "f" or xs.shape != (len(idx), *in_shape) or not np.isfinite(xs).all():
        raise VeriSparseError(f"counterexamples {p}: x must be {len(idx)} finite inputs of shape "
                              f"{tuple(in_shape)}; it is {xs.dtype} {xs.shape}")
    return {int(i): x.astype(np.float32) for i, x in zip(idx, xs)}


def write_junit(path, cert):
    """One test case for the gate (verified accuracy >= --min-vra) and one per sample;
    samples that are not verified are reported as skipped so only the gate decides CI."""
    s = cert["summary"]
    suite = ET.Element("testsuite", name=f"verisparse.verify.{cert['artifact']['kind']}",
                       tests=str(1 + len(cert["samples"])), failures="0" if s["passed"] else "1",
                       skipped=str(s["n"] - s["verified"]), time=f"{s['seconds']:.3f}")
    gate = ET.SubElement(suite, "testcase", classname="verisparse.verify", name="verified_accuracy_gate",
                         time=f"{cert['wall_seconds']:.3f}")
    msg = (f"verified accuracy {s['verified_accuracy']:.4f} {'>=' if s['passed'] else '<'} min-vra "
           f"{s['min_vra']} ({cert['method']}, eps {cert['eps']}, {cert['artifact']['path']})")
    if not s["passed"]:
        ET.SubElement(gate, "failure", message=msg, type="VerifiedAccuracyBelowThreshold").text = msg
    else:
        ET.SubElement(gate, "system-out").text = msg
    for r in cert["samples"]:
        case = ET.SubElement(suite, "testcase", classname="verisparse.verify.samples",
                             name=f"sample_{r['index']}", time=f"{r['seconds']:.6f}")
        if r["status"] != "verified":
            detail = f"{r['status']} by {r['decided_by']}"
            if r.get("margin_at_counterexample") is not None:
                detail += f" (margin {r['margin_at_counterexample']:.4g} at a confirmed counterexample)"
            ET.SubElement(case, "skipped", message=detail)
    tree = ET.ElementTree(ET.Element("testsuites"))
    tree.getroot().append(suite)
    ET.indent(tree)
    atomic_write(path, lambda f: tree.write(f, encoding="utf-8", xml_declaration=True))


def _budget_note(cert):
    left = sum(r["decided_by"] == "time-budget" for r in cert["samples"])
    return f"  ({left} not tried: --time-budget ran out)" if left else ""


def table(cert):
    s, d = cert["summary"], cert["dataset"]
    n = s["n"]
    pct = lambda k: f"{k / n:8.2%}" if n else "       -"
    lines = [f"artifact  {cert['artifact']['path']} ({cert['artifact']['kind']}, sha256 {cert['artifact']['sha256'][:12]})",
             f"dataset   {d['name']} {d['split']}, {n} samples; eps {cert['eps']}; method {cert['method']}"
             + (f"; kernels {cert['kernels']}" if "kernels" in cert else ""),
             f"  {'':<26}{'count':>7}  {'accuracy':>8}",
             f"  {'clean correct':<26}{s['clean_correct']:>7}  {pct(s['clean_correct'])}"]
    for stage, acc in s["ladder"].items():
        lines.append(f"  {'verified by ' + stage:<26}{round(acc * n):>7}  {pct(round(acc * n))}")
    lines += [f"  {'verified':<26}{s['verified']:>7}  {pct(s['verified'])}",
              f"  {'unknown':<26}{s['unknown']:>7}{_budget_note(cert)}",
              f"  {'falsified (confirmed)':<26}{s['falsified']:>7}",
              f"  {'attack-robust (heuristic)':<26}{n - s['falsified']:>7}  {pct(n - s['falsified'])}"]
    exact = f"exact {s['verified_accuracy']:.2%}" if s["exact"] else "exact unknown"
    lines.append(f"  ladder: verified {s['verified_accuracy']:.2%} <= {exact} <= attack-robust "
                 f"{s['attack_robust_accuracy']:.2%} (an upper bound: what heuristic attacks did not break)")
    notes = Counter(r["note"] for r in cert["samples"] if r.get("note"))
    lines += [f"  note ({k} samples): {text}" for text, k in notes.items()]
    verdict = "PASS" if s["passed"] else "FAIL"
    lines.append(f"{verdict}: verified accuracy {s['verified_accuracy']:.2%} "
                 f"{'>=' if s['passed'] else '<'} --min-vra {s['min_vra']:.2%}  ({s['seconds']:.1f} s)")
    return "\n".join(lines)
