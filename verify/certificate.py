"""cert.json, its JUnit twin for CI, the terminal table, and re-checking a certificate.

A certificate binds a result to exact bytes: the artifact's sha256 and the sha256 of the
dataset split it was computed on. Counterexamples go beside it in an .npz (they are images,
not JSON material) so `--check` can replay them on the artifact's runtime.
"""
from __future__ import annotations

import platform
import time
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
    for stage in ("ibp", "crown", "int8-ibp", "int8-crown", "milp"):
        if stage in by_stage:
            acc += by_stage[stage]
            ladder[stage] = acc / n
    vra = counts["verified"] / n if n else 0.0
    return dict(n=n, verified=counts["verified"], falsified=counts["falsified"], unknown=counts["unknown"],
                clean_correct=sum(1 for r in results if r.decided_by != "clean"),
                verified_accuracy=vra, attack_robust_accuracy=(n - counts["falsified"]) / n if n else 0.0,
                exact=counts["unknown"] == 0, ladder=ladder, min_vra=min_vra, passed=vra >= min_vra,
                seconds=round(sum(r.seconds for r in results), 3))


def build(artifact, dataset_info, eps, method, time_limit, results, min_vra, wall_seconds):
    return dict(
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
    cex = [(r.index, r.counterexample) for r in results if r.counterexample is not None]
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
    except (ValueError, UnicodeDecodeError) as e:
        raise VeriSparseError(f"{path} is not a JSON certificate ({e})") from None
    need = ("artifact", "dataset", "eps", "method", "samples", "summary")
    if not isinstance(cert, dict) or cert.get("format") != FORMAT or any(k not in cert for k in need):
        raise VeriSparseError(f"{path} is not a {FORMAT} certificate")
    return cert


def read_counterexamples(cert_path, cert):
    name = cert.get("counterexamples")
    if not name:
        return {}
    p = Path(cert_path).with_name(Path(name).name)
    try:
        with np.load(p, allow_pickle=False) as z:
            return {int(i): x for i, x in zip(z["index"], z["x"])}
    except (OSError, KeyError, ValueError) as e:
        raise VeriSparseError(f"cannot read the counterexamples {p}: {e}") from None


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


def table(cert):
    s, d = cert["summary"], cert["dataset"]
    n = s["n"]
    pct = lambda k: f"{k / n:8.2%}" if n else "       -"
    lines = [f"artifact  {cert['artifact']['path']} ({cert['artifact']['kind']}, sha256 {cert['artifact']['sha256'][:12]})",
             f"dataset   {d['name']} {d['split']}, {n} samples; eps {cert['eps']}; method {cert['method']}",
             f"  {'':<26}{'count':>7}  {'accuracy':>8}",
             f"  {'clean correct':<26}{s['clean_correct']:>7}  {pct(s['clean_correct'])}"]
    for stage, acc in s["ladder"].items():
        lines.append(f"  {'verified by ' + stage:<26}{round(acc * n):>7}  {pct(round(acc * n))}")
    lines += [f"  {'verified':<26}{s['verified']:>7}  {pct(s['verified'])}",
              f"  {'unknown':<26}{s['unknown']:>7}",
              f"  {'falsified (confirmed)':<26}{s['falsified']:>7}",
              f"  {'attack-robust (upper)':<26}{n - s['falsified']:>7}  {pct(n - s['falsified'])}"]
    exact = f"exact {s['verified_accuracy']:.2%}" if s["exact"] else "exact unknown"
    lines.append(f"  ladder: verified {s['verified_accuracy']:.2%} <= {exact} <= attack-robust "
                 f"{s['attack_robust_accuracy']:.2%}")
    verdict = "PASS" if s["passed"] else "FAIL"
    lines.append(f"{verdict}: verified accuracy {s['verified_accuracy']:.2%} "
                 f"{'>=' if s['passed'] else '<'} --min-vra {s['min_vra']:.2%}  ({s['seconds']:.1f} s)")
    return "\n".join(lines)
