"""report.html: one self-contained page per run (or one page comparing runs).

load.py reads the run directory, plots.py draws, sections.py lays out each stage,
html.py assembles the page, compare.py puts several runs on the same axes.
"""
from __future__ import annotations

from pathlib import Path

from verisparse.files import atomic_write


def build_report(run_dir, out=None, data_root=None) -> Path:
    from .html import page
    from .load import load_run
    from .sections import all_sections
    run = load_run(run_dir)
    out = Path(out) if out else run.path / "report.html"
    cfg = run.config or {}
    title = f"VeriSparse run {run.name}"
    sub = " · ".join(str(v) for v in (cfg.get("dataset"), cfg.get("arch"), cfg.get("eps") and f"eps {cfg['eps']}")
                     if v) or str(run.path)
    text = page(title, sub, all_sections(run, data_root))
    atomic_write(out, lambda f: f.write(text), mode="w")
    return out


def build_compare(run_dirs, out) -> Path:
    from .compare import compare_page
    text = compare_page(run_dirs)
    out = Path(out)
    atomic_write(out, lambda f: f.write(text), mode="w")
    return out
