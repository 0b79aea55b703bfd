"""`verisparse report --compare RUN_A RUN_B ...`: the runs' trade-offs on shared axes."""
from __future__ import annotations

from . import plots
from .html import note, page, table
from .load import load_run


def metrics(run):
    """One row of numbers per run: the best certificate's verified accuracy (float first)."""
    m = dict(verified_accuracy=None, eps=None, train_seconds=None, sparsity=None, flash_bytes=None,
             clean_acc=None, artifact=None)
    if run.log:
        last = run.log[-1]
        m.update(train_seconds=last.get("train_seconds"), sparsity=last.get("sparsity"), clean_acc=last.get("clean_acc"))
        m["verified_accuracy"] = last.get("crown_verified_acc", last.get("ibp_verified_acc"))
        m["artifact"] = "training log"
        m["eps"] = last.get("eps")
    certs = sorted(run.certificates, key=lambda c: c.data.get("artifact", {}).get("kind") != "onnx")
    if certs:
        c = certs[0]
        m.update(verified_accuracy=c.data["summary"]["verified_accuracy"], eps=c.data["eps"], artifact=c.path.name)
    if run.firmware and "flash" in run.firmware:
        m["flash_bytes"] = run.firmware["flash"]["bytes"]
    return m


def compare_page(run_dirs):
    runs = [load_run(p) for p in run_dirs]
    rows = [(r.name, metrics(r)) for r in runs]
    figs = ""
    for key, label in (("train_seconds", "training time (s)"), ("sparsity", "sparsity (fraction of zero weights)"),
                       ("flash_bytes", "flash (bytes)")):
        svg = plots.compare(rows, key, label)
        figs += f"<div>{svg}</div>" if svg else note(f"No run records {label}.")
    body = f'<div class="figs">{figs}</div>'
    header = ["run", "verified accuracy", "eps", "from", "clean accuracy", "sparsity", "train time (s)", "flash (B)"]
    trows = [(n, m["verified_accuracy"], m["eps"], m["artifact"], m["clean_acc"], m["sparsity"], m["train_seconds"],
              m["flash_bytes"]) for n, m in rows]
    trows = [tuple("-" if v is None else v for v in r) for r in trows]
    body += table(header, trows)
    body += note("Verified accuracy comes from each run's float certificate where there is one, else the "
                 "last epoch's CROWN- (or IBP-) verified accuracy in the training log; compare runs at one eps.")
    sweeps = []
    for r in runs:
        for c in r.certificates:
            if c.data.get("eps_sweep"):
                sweeps.append((f"{r.name} {c.label}", c.data["eps_sweep"]))
    sections = [("tradeoffs", "Trade-offs", body)]
    if sweeps:
        sections.append(("sweeps", "Verified accuracy against eps", plots.eps_sweep(sweeps)))
    return page("VeriSparse: " + ", ".join(r.name for r in runs), f"{len(runs)} runs compared", sections)
