"""`verisparse report`: write RUN_DIR/report.html, or one page comparing runs."""
from __future__ import annotations

import click


@click.command(epilog="""\b
Examples:
  verisparse report runs/default
  verisparse report runs/default --out ci/report.html
  verisparse report --compare runs/verisparse runs/prune_finetune runs/dense --out compare.html
""")
@click.argument("runs", nargs=-1, type=click.Path(), required=True)
@click.option("--out", type=click.Path(), default=None, help="HTML file to write [default: RUN_DIR/report.html].")
@click.option("--compare", is_flag=True, help="Put several runs on the same axes in one page (needs --out).")
@click.option("--data-root", type=click.Path(), default=None, help="Folder with torchvision-layout datasets.")
def report(runs, out, compare, data_root):
    """Write one self-contained HTML page (no network needed) for RUN_DIR: training, model,
    export, robustness, firmware and provenance, for whichever stages the run has."""
    from verisparse.errors import VeriSparseError

    from . import build_compare, build_report
    if compare:
        if not out:
            raise VeriSparseError("--compare needs --out FILE (the page belongs to no single run)")
        path = build_compare(runs, out)
    else:
        if len(runs) != 1:
            raise VeriSparseError(f"give one RUN_DIR (got {len(runs)}); use --compare for several runs")
        path = build_report(runs[0], out, data_root)
    click.echo(f"report: {path}")
