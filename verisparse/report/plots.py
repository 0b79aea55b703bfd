"""The report's figures: matplotlib (Agg) rendered to inline SVG, one small function each.

Each function takes plain data and returns an SVG string (or None when there is nothing to
draw). The SVG is made safe to paste into HTML: no XML prolog, no DOCTYPE, no namespace URLs
(the HTML parser knows svg and xlink without them), and ids salted per figure so several
figures on one page never share an id.
"""
from __future__ import annotations

import io
import itertools
import re

import numpy as np

_salt = itertools.count()
TRAIN_CURVES = (("clean_acc", "clean"), ("ibp_verified_acc", "IBP-verified"),
                ("crown_ibp_verified_acc", "CROWN-IBP-verified"), ("crown_verified_acc", "CROWN-verified"),
                ("pgd_robust_acc", "PGD-robust (upper bound)"))


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def figure(w=6.4, h=3.2, **kw):
    plt = _plt()
    return plt.subplots(figsize=(w, h), layout="constrained", **kw)


def to_svg(fig):
    plt = _plt()
    plt.rcParams["svg.hashsalt"] = f"vsr{next(_salt)}"
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    # scale with the page: drop the fixed size, keep the viewBox
    svg = re.sub(r'^<svg([^>]*?)\swidth="([\d.]+)pt"\s+height="[^"]*"',
                 r'<svg\1 class="fig" style="max-width:\2pt"', svg, count=1)
    return svg


def training(log):
    epochs = [r["epoch"] for r in log]
    fig, (ax, ax2) = figure(9, 3.2, ncols=2)
    for key, label in TRAIN_CURVES:
        if any(key in r for r in log):
            pts = [(r["epoch"], r[key]) for r in log if key in r]
            ax.plot(*zip(*pts), marker="o" if len(pts) < 3 else None, label=label,
                    linestyle="--" if key == "pgd_robust_acc" else "-")
    ax.set(xlabel="epoch", ylabel="accuracy on the test split", ylim=(0, 1.02), title="accuracy per epoch")
    ax.legend(fontsize=7, loc="lower right")
    if any("eps_train_now" in r for r in log):
        ax2.plot(epochs, [r.get("eps_train_now", np.nan) for r in log], color="tab:purple", label="eps (training)")
        ax2.set_ylabel("training eps")
        ax2.legend(fontsize=7, loc="center right")
    axl = ax2.twinx()
    axl.plot(epochs, [r.get("loss", np.nan) for r in log], color="tab:red", label="loss")
    axl.set_ylabel("loss", color="tab:red")
    ax2.set(xlabel="epoch", title="eps schedule and loss")
    return to_svg(fig)


def sparsity(log):
    per_layer = [r.get("layer_sparsity") for r in log]
    fig, ax = figure(6.4, 2.8)
    epochs = [r["epoch"] for r in log]
    ax.plot(epochs, [r.get("sparsity", np.nan) for r in log], color="black", lw=2, label="whole model")
    if any(isinstance(p, dict) for p in per_layer):
        names = sorted({k for p in per_layer if isinstance(p, dict) for k in p})
        for name in names:
            ax.plot(epochs, [p.get(name, np.nan) if isinstance(p, dict) else np.nan for p in per_layer], label=name)
    ax.set(xlabel="epoch", ylabel="fraction of weights that are zero", ylim=(0, 1.02), title="sparsity over training")
    ax.legend(fontsize=7)
    return to_svg(fig)


def mask_changes(log):
    pts = [(r["epoch"], r["mask_changes"]) for r in log if isinstance(r.get("mask_changes"), (int, float))]
    if not pts:
        return None
    fig, ax = figure(6.4, 2.4)
    ax.bar(*zip(*pts), color="tab:orange")
    ax.set(xlabel="epoch", ylabel="weights moved", title="mask changes (weights pruned or regrown) per epoch")
    return to_svg(fig)


def layers(before, after):
    n = max(len(before), len(after))
    fig, axes = figure(9, 2.8, ncols=3)
    x = np.arange(n)
    names = [f"{i}:{(before or after)[i]['layer'].replace('Masked', '')}" for i in range(n)]
    kept = [a["weight_shape"][0] for a in after]
    units = [b["weight_shape"][0] for b in before]
    for ax, key, title in ((axes[0], None, "units (neurons / filters)"), (axes[1], "nonzero_weights", "weights"),
                           (axes[2], "effective_macs", "MACs per inference")):
        vb = units if key is None else [b["dense_macs"] if key == "effective_macs" else b["params"] for b in before]
        va = kept if key is None else [a[key] for a in after]
        ax.bar(x - 0.2, vb, 0.4, label="before (dense)" if key else "before folding", color="#bbb")
        ax.bar(x + 0.2, va, 0.4, label="after (non-zero)" if key else "kept", color="tab:blue")
        ax.set_xticks(x, names, fontsize=7)
        ax.set_title(title)
        if key:
            ax.set_yscale("log")
        ax.legend(fontsize=6)
    return to_svg(fig)


def masks(masks):
    """One row per layer: a dot per unit, filled when any of its weights survived; and the
    weight mask itself (units x fan-in) as an image."""
    if not masks:
        return None
    items = list(masks.items())
    fig, axes = figure(9, 1.5 + 1.3 * len(items), nrows=len(items), ncols=2, squeeze=False,
                       gridspec_kw=dict(width_ratios=[1, 2]))
    for (name, m), (a1, a2) in zip(items, axes):
        m2 = m.reshape(m.shape[0], -1)
        alive = m2.any(1)
        side = int(np.ceil(np.sqrt(len(alive))))
        grid = np.full(side * side, np.nan)
        grid[:len(alive)] = alive
        a1.imshow(grid.reshape(side, side), cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest")
        a1.set_title(f"layer {name}: {alive.sum()}/{len(alive)} units alive", fontsize=8)
        a2.imshow(m2, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        a2.set_title(f"weight mask, {m2.mean():.1%} kept (units x fan-in)", fontsize=8)
        for a in (a1, a2):
            a.set_xticks([])
            a.set_yticks([])
            a.grid(False)
    return to_svg(fig)


def saturation(layers):
    if not layers:
        return None
    fig, ax = figure(6.4, 2.4)
    frac = [r["saturated"] / max(r["values"], 1) for r in layers]
    ax.bar(range(len(layers)), frac, color="tab:red")
    ax.set_xticks(range(len(layers)), [f"{i}:{r['op'][:10]}" for i, r in enumerate(layers)], fontsize=7)
    ax.set(ylabel="fraction at int8 ends", title="activation saturation per layer (calibration samples)")
    return to_svg(fig)


def ladder(certs):
    """certs: [(label, summary)]. verified <= exact <= attack-robust per artifact."""
    fig, ax = figure(6.4, 2.2 + 0.5 * len(certs))
    y = np.arange(len(certs))
    for k, (label, s) in enumerate(certs):
        clean = s["clean_correct"] / max(s["n"], 1)
        ax.barh(k, clean, color="#e8e8e8", label="clean accuracy" if k == 0 else None)
        ax.barh(k, s["attack_robust_accuracy"], color="#f4b183", height=0.6,
                label="attack-robust (upper bound, heuristic attacks)" if k == 0 else None)
        ax.barh(k, s["verified_accuracy"], color="tab:green", height=0.6, label="verified (proved)" if k == 0 else None)
        if s.get("exact"):
            ax.plot([s["verified_accuracy"]], [k + 0.38], marker="v", color="black", ls="",
                    label="exact (no sample left unknown)" if not any(c[1].get("exact") for c in certs[:k]) else None)
        ax.text(s["verified_accuracy"], k, f" {s['verified_accuracy']:.1%}", va="center", fontsize=8)
    ax.set_yticks(y, [c[0] for c in certs])
    ax.set(xlim=(0, 1), xlabel="fraction of the certified samples", title="robustness ladder")
    ax.legend(fontsize=7, loc="upper right")
    return to_svg(fig)


def eps_sweep(curves, marks=()):
    """curves: [(label, [point])]; marks: eps values to draw as vertical lines (trained eps)."""
    fig, ax = figure(6.4, 3.0)
    for label, pts in curves:
        ax.plot([p["eps"] for p in pts], [p["verified_accuracy"] for p in pts], marker="o", ms=3, label=label)
        n = max(p["verified"] + p["falsified"] + p["unknown"] for p in pts)
        if n:
            ax.plot([p["eps"] for p in pts], [1 - p["falsified"] / n for p in pts], linestyle=":", alpha=0.7,
                    label=f"{label}: not falsified (upper bound)")
    for e in marks:
        ax.axvline(e, color="grey", linestyle="--", lw=1)
    ax.set(xlabel="eps (L-inf radius, pixel space)", ylabel="accuracy", ylim=(0, 1.02),
           title="verified accuracy against eps")
    ax.legend(fontsize=7)
    return to_svg(fig)


def margins(certs):
    """certs: [(label, [margin_lower])]: where the proofs stand (> 0 is verified)."""
    fig, ax = figure(6.4, 2.6)
    vals = [np.asarray([v for v in m if v is not None and np.isfinite(v)]) for _, m in certs]
    if not any(len(v) for v in vals):
        return None
    allv = np.concatenate([v for v in vals if len(v)])
    bins = np.linspace(allv.min(), allv.max(), 30) if allv.min() < allv.max() else 10
    for (label, _), v in zip(certs, vals):
        ax.hist(v, bins=bins, alpha=0.55, label=label)
    ax.axvline(0, color="black", lw=1)
    ax.set(xlabel="certified margin lower bound (> 0: verified)", ylabel="samples",
           title="distribution of certified margins")
    ax.legend(fontsize=7)
    return to_svg(fig)


def per_class(certs):
    """certs: [(label, {class: (verified, total)})]."""
    fig, ax = figure(6.4, 2.6)
    classes = sorted({c for _, d in certs for c in d})
    w = 0.8 / max(len(certs), 1)
    for k, (label, d) in enumerate(certs):
        acc = [d[c][0] / d[c][1] if c in d and d[c][1] else 0 for c in classes]
        ax.bar(np.arange(len(classes)) + (k - (len(certs) - 1) / 2) * w, acc, w, label=label)
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set(xlabel="class", ylabel="verified accuracy", ylim=(0, 1.02), title="verified accuracy per class")
    ax.legend(fontsize=7)
    return to_svg(fig)


def _img(x):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3 and x.shape[0] in (1, 3):
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 1:
        side = int(np.sqrt(x.size))
        x = x.reshape(side, -1) if side * side == x.size else x[None]
    return np.clip(x, 0, 1)


def samples(images, titles):
    """images: list of arrays; titles: one per image."""
    if not images:
        return None
    cols = min(len(images), 8)
    rows = int(np.ceil(len(images) / cols))
    fig, axes = figure(1.15 * cols, 1.35 * rows, nrows=rows, ncols=cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, x, t in zip(axes.flat, images, titles):
        ax.imshow(_img(x), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(t, fontsize=7)
    return to_svg(fig)


def firmware_layers(rows):
    rows = [r for r in rows if r.get("dense_macs")]
    if not rows:
        return None
    fig, (a1, a2) = figure(9, 2.6, ncols=2)
    x = np.arange(len(rows))
    names = [f"{r['index']}:{r['op'][:6]}" for r in rows]
    a1.bar(x - 0.2, [r["dense_weight_bytes"] for r in rows], 0.4, color="#bbb", label="dense")
    a1.bar(x + 0.2, [r["stored_weight_bytes"] for r in rows], 0.4, color="tab:blue", label="stored")
    a1.set(title="weight bytes in flash per layer", yscale="log")
    a2.bar(x - 0.2, [r["dense_macs"] for r in rows], 0.4, color="#bbb", label="dense")
    a2.bar(x + 0.2, [r["effective_macs"] for r in rows], 0.4, color="tab:orange", label="effective")
    a2.set(title="MACs per layer", yscale="log")
    for a in (a1, a2):
        a.set_xticks(x, names, fontsize=7)
        a.legend(fontsize=7)
    return to_svg(fig)


def compare(runs, xkey, xlabel):
    """runs: [(name, {metric: value})]; verified accuracy against xkey, one point per run."""
    pts = [(n, m[xkey], m["verified_accuracy"]) for n, m in runs
           if m.get(xkey) is not None and m.get("verified_accuracy") is not None]
    if not pts:
        return None
    fig, ax = figure(4.2, 3.0)
    for n, x, y in pts:
        ax.scatter([x], [y], s=40, label=n)
        ax.annotate(n, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel=xlabel, ylabel="verified accuracy", title=f"verified accuracy vs {xlabel.split(' (')[0]}")
    if xkey == "flash_bytes":
        ax.set_xscale("log")
    return to_svg(fig)
