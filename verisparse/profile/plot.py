"""A bar chart of p50 latency per model, runtime and thread count (when matplotlib is there)."""
from __future__ import annotations

from pathlib import Path

from verisparse.files import atomic_write


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write(record: dict, path: Path) -> None:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arts = record["artifacts"]
    keys = []
    for a in arts:
        keys += [(r["runtime"], r["threads"]) for r in a["rows"] if (r["runtime"], r["threads"]) not in keys]
    width = 0.8 / max(len(arts), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys)), 3.5))
    for i, a in enumerate(arts):
        p50 = {(r["runtime"], r["threads"]): r for r in a["rows"]}
        xs = [k + i * width for k, key in enumerate(keys) if key in p50]
        ys = [p50[key]["p50_ms"] for key in keys if key in p50]
        err = [p50[key]["p90_ms"] - p50[key]["p50_ms"] for key in keys if key in p50]
        ax.bar(xs, ys, width, yerr=[[0] * len(err), err], label=a["label"], capsize=2)
    ax.set_xticks([k + width * (len(arts) - 1) / 2 for k in range(len(keys))])
    ax.set_xticklabels([f"{rt}\n{t} thr" for rt, t in keys], fontsize=8)
    ax.set_ylabel("latency p50 ms (bar to p90)")
    m = record["machine"]
    ax.set_title(("EMULATED - not real latencies: " if m.get("emulated") else "") + f"{m['model']} ({m['machine']})",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
