"""One function per section of a run's report: run data in, (id, title, html) out."""
from __future__ import annotations

import json
from collections import defaultdict

from . import plots
from .html import Raw, cards, esc, note, status, table
from .load import Run, dataset_images
from .provenance import artifacts, machine, tool_versions

MAX_PICTURES = 8


def summary(run: Run):
    items = []
    if run.config:
        c = run.config
        items += [("dataset / arch", f"{c.get('dataset')} / {c.get('arch')}"), ("trained eps", c.get("eps"))]
    if run.log:
        last = run.log[-1]
        items += [("epochs", last.get("epoch")), ("train time", f"{last.get('train_seconds', 0):.1f} s"),
                  ("sparsity", f"{last.get('sparsity', 0):.1%}"), ("clean accuracy", f"{last.get('clean_acc', 0):.1%}")]
    for c in run.certificates:
        s = c.data["summary"]
        items.append((f"verified @ eps {c.data['eps']}, {c.label}", f"{s['verified_accuracy']:.1%}"))
    if run.firmware and "flash" in run.firmware:
        items += [("flash", f"{run.firmware['flash']['bytes']:,} B"), ("RAM", f"{run.firmware['ram']['bytes']:,} B")]
    stages = table(["stage file", "present"], [(n, status(p, "yes", "missing")) for n, p in run.present()])
    missing = [n for n, p in run.present() if not p]
    body = cards(items) + "<h3>Stages</h3>" + stages
    if missing:
        body += note("Missing: " + ", ".join(missing) + ". Sections for those stages are left out.")
    for n in run.notes:
        body += note(n)
    return "summary", "Summary", body


def training(run: Run):
    if not run.log:
        return "training", "Training", note("train_log.jsonl is missing or empty: no training to show.")
    body = plots.training(run.log) + plots.sparsity(run.log)
    if not any(isinstance(r.get("layer_sparsity"), dict) for r in run.log):
        body += note("The log records whole-model sparsity only (no per-layer field).")
    mc = plots.mask_changes(run.log)
    body += mc if mc else note("The log records no mask changes per update.")
    last = run.log[-1]
    keys = [k for k in ("epoch", "phase", "eps", "loss", "clean_acc", "ibp_verified_acc", "crown_ibp_verified_acc",
                        "crown_verified_acc", "pgd_robust_acc", "sparsity", "effective_params", "train_seconds")
            if k in last]
    body += "<h3>Last epoch</h3>" + table(None, [(k, last[k]) for k in keys])
    return "training", "Training", body


def model(run: Run):
    body = ""
    e = run.export
    if e and e.get("layers_before") and e.get("layers_after"):
        body += plots.layers(e["layers_before"], e["layers_after"])
        rows = []
        for k, (b, a) in enumerate(zip(e["layers_before"], e["layers_after"])):
            rows.append((k, b["layer"], "x".join(map(str, b["weight_shape"])), "x".join(map(str, a["weight_shape"])),
                         b["nonzero_weights"], a["nonzero_weights"], b["dense_macs"], a["effective_macs"]))
        body += table(["#", "layer", "shape before", "shape after folding", "non-zero before", "non-zero after",
                       "MACs dense", "MACs effective"], rows)
    else:
        body += note("export.json is missing: no before/after folding table.")
    pic = plots.masks(run.masks)
    body += ("<h3>Which units and weights survived</h3>" + pic) if pic else note(
        "No masks in checkpoint.pt (or no checkpoint): no survival picture.")
    return "model", "The model", body


def export(run: Run):
    e = run.export
    if not e:
        return "export", "Export", note("export.json is missing: run `verisparse export RUN`.")
    p8 = e.get("parity", {}).get("int8", {})
    rows = [(k, p8[k]) for k in sorted(p8) if not isinstance(p8[k], (dict, list))]
    rows += [("fold max abs error", e["parity"].get("fold_max_abs_error")),
             ("ONNX max abs error", e["parity"].get("onnx_max_abs_error")),
             ("model.onnx bytes", e.get("onnx", {}).get("bytes")),
             ("model_int8.tflite bytes", e.get("tflite", {}).get("bytes"))]
    body = "<h3>Float vs int8 (test split)</h3>" + table(["measure", "value"], rows)
    sat = e.get("tflite", {}).get("calibration_saturation", {})
    if sat:
        body += note(f"Calibration saturation: {sat.get('saturated')} of {sat.get('values')} int8 activations "
                     f"({sat.get('fraction', 0):.3%}) pinned at the ends of the int8 range.")
        svg = plots.saturation(sat.get("layers"))
        body += svg or ""
    return "export", "Export", body


def robustness(run: Run, data_root=None):
    certs = run.certificates
    if not certs:
        return "robustness", "Robustness", note("No certificate*.json: run `verisparse verify`.")
    body = plots.ladder([(f"{c.label} @ eps {c.data['eps']}", c.data["summary"]) for c in certs])
    rows = []
    for c in certs:
        s = c.data["summary"]
        exact = f"{s['verified_accuracy']:.2%}" if s.get("exact") else "unknown"
        rows.append((c.path.name, c.label, c.data["eps"], c.data.get("method_resolved", c.data["method"]), s["n"],
                     f"{s['verified_accuracy']:.2%}", exact, f"{s['attack_robust_accuracy']:.2%}",
                     status(s["passed"], "PASS", "FAIL")))
    body += table(["certificate", "artifact", "eps", "method", "samples", "verified", "exact",
                   "attack-robust (upper bound)", "gate"], rows)
    body += note("verified <= exact <= attack-robust. Attack-robust is an upper bound found by heuristic "
                 "attacks (PGD); exact is known only when no sample is left unknown.")
    sweeps = [(c.label, c.data["eps_sweep"]) for c in certs if c.data.get("eps_sweep")]
    if sweeps:
        marks = sorted({c.data["eps"] for c in certs})
        body += "<h3>Verified accuracy against eps</h3>" + plots.eps_sweep(sweeps, marks)
    else:
        body += note("No eps sweep in the certificates: run `verisparse verify ... --eps-sweep START:STOP:STEP`.")
    m = plots.margins([(c.label, [r.get("margin_lower") for r in c.data["samples"]]) for c in certs])
    body += ("<h3>Certified margins</h3>" + m) if m else ""
    body += "<h3>Per class</h3>" + plots.per_class([(c.label, _per_class(c)) for c in certs])
    body += _pictures(certs, data_root)
    return "robustness", "Robustness", body


def _per_class(cert):
    d = defaultdict(lambda: [0, 0])
    for r in cert.data["samples"]:
        d[r["label"]][1] += 1
        d[r["label"]][0] += r["status"] == "verified"
    return {k: tuple(v) for k, v in d.items()}


def _pictures(certs, data_root):
    cert = next((c for c in certs if c.data.get("eps_sweep_certified_radius")), certs[0])
    x = dataset_images(cert, data_root)
    if x is None:
        return note(f"The dataset {cert.data['dataset'].get('name')} does not load here: no sample pictures.")
    samples = cert.data["samples"]
    radius = cert.data.get("eps_sweep_certified_radius")
    imgs, titles = [], []
    for k, r in enumerate(samples[:MAX_PICTURES]):
        imgs.append(x[r["index"]])
        t = f"#{r['index']} y={r['label']}"
        titles.append(t + (f"\nr={radius[k]:g}" if radius else f"\n{r['status']}"))
    body = f"<h3>Samples ({cert.label}) with their largest certified radius</h3>"
    body += plots.samples(imgs, titles)
    if not radius:
        body += note("No sweep: the titles show the status at the certificate's eps instead.")
    pairs = [(c.label, i, xc) for c in certs for i, xc in sorted(c.counterexamples.items())
             if 0 <= i < len(x)][:MAX_PICTURES // 2]
    if pairs:
        imgs, titles = [], []
        for label, i, xc in pairs:
            imgs += [x[i], xc.reshape(x[i].shape)]
            titles += [f"#{i} original", f"counterexample\n{label.split()[0]}"]
        body += "<h3>Falsified samples: original and counterexample</h3>" + plots.samples(imgs, titles)
    return body


def firmware(run: Run):
    f = run.firmware
    if not f:
        return "firmware", "Firmware", note("firmware.json is missing: run `verisparse firmware RUN --run`.")
    b = f.get("board", {})
    t = f.get("totals", {})
    rows = [("board", f"{b.get('name')} ({b.get('cpu')}): {b.get('description', '')}"),
            ("non-zero weights", t.get("nonzero_weights")), ("stored weight bytes", t.get("stored_weight_bytes")),
            ("dense weight bytes", t.get("dense_weight_bytes")), ("MACs dense / effective",
                                                                   f"{t.get('dense_macs')} / {t.get('effective_macs')}"),
            ("activation arena bytes", f.get("arena", {}).get("bytes"))]
    if "flash" in f:
        rows += [("flash bytes", f["flash"]["bytes"]), ("RAM bytes", f["ram"]["bytes"]),
                 ("instructions per inference", f["instructions"]["per_inference"]),
                 ("instructions per effective MAC", f["instructions"]["per_effective_mac"])]
    ex = f.get("exactness")
    if ex:
        rows.append(("bit-exact vs TFLM / LiteRT", status(ex.get("exact"), "exact", "DIFFERS")))
        rows.append(("vectors checked", ex.get("vectors")))
    body = table(["measure", "value"], rows)
    if "flash" not in f:
        body += note("Not built and run (no --run): flash, RAM and instruction counts are not measured.")
    svg = plots.firmware_layers(f.get("layers", []))
    body += svg or ""
    body += note("Per-layer figures are planned sizes and MACs; instructions are measured for the whole inference.")
    return "firmware", "Firmware", body


def provenance(run: Run):
    rows = [(Raw(f"<code>{esc(p)}</code>"), size, Raw(f"<code>{esc(h)}</code>")) for p, size, h in artifacts(run.path)]
    body = "<h3>Artifacts</h3>" + table(["file", "bytes", "sha256"], rows)
    if run.config:
        body += "<h3>config.json</h3><pre>" + esc(json.dumps(run.config, indent=1, sort_keys=True)) + "</pre>"
    body += "<h3>Tools</h3>" + table(["package", "version"], tool_versions())
    body += "<h3>Machine</h3>" + table(None, machine())
    return "provenance", "Provenance", body


def all_sections(run: Run, data_root=None):
    return [summary(run), training(run), model(run), export(run), robustness(run, data_root), firmware(run),
            provenance(run)]
