"""Page assembly: one self-contained HTML file, responsive CSS, no scripts, nothing fetched."""
from __future__ import annotations

import html
import time

CSS = """
:root{--fg:#1d2330;--mut:#5b6475;--bg:#fff;--line:#e3e6ec;--ok:#1f7a3a;--bad:#b3261e;--warn:#8a5a00}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:16px}
header{background:var(--bg);border-bottom:1px solid var(--line);padding:14px 16px}
header h1{margin:0;font-size:1.35rem}
section{background:var(--bg);border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin:14px 0}
h2{font-size:1.15rem;margin:.2rem 0 .6rem}
h3{font-size:1rem;margin:1rem 0 .4rem;color:var(--mut)}
nav a{margin-right:.8rem;color:#2457c5;text-decoration:none;white-space:nowrap}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:10px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 10px}
.card b{display:block;font-size:1.25rem}
.card span{color:var(--mut);font-size:.85rem}
.tbl{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.82rem;word-break:break-all}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:8px}
svg.fig{width:100%;height:auto;display:block;margin:6px 0}
.ok{color:var(--ok);font-weight:600}.bad{color:var(--bad);font-weight:600}.warn{color:var(--warn)}
.note{color:var(--mut);font-size:.9rem}
pre{background:#f3f4f7;padding:8px;border-radius:6px;overflow-x:auto;font-size:.8rem}
@media (max-width:600px){main{padding:6px}section{padding:10px}body{font-size:14px}th,td{padding:3px 4px}}
"""


def esc(v):
    return html.escape(str(v), quote=True)


def fmt(v):
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(header, rows):
    def cell(tag, v):
        num = isinstance(v, (int, float)) and not isinstance(v, bool)
        return f"<{tag}{' class=n' if num else ''}>{esc(fmt(v)) if not isinstance(v, Raw) else v}</{tag}>"
    head = "".join(cell("th", h) for h in header) if header else ""
    body = "".join("<tr>" + "".join(cell("td", v) for v in r) + "</tr>" for r in rows)
    return f'<div class="tbl"><table>{f"<thead><tr>{head}</tr></thead>" if head else ""}<tbody>{body}</tbody></table></div>'


class Raw(str):
    """Markup that is already safe (made here, never from a file's text)."""


def status(ok, yes="yes", no="no"):
    return Raw(f'<span class="ok">{esc(yes)}</span>' if ok else f'<span class="bad">{esc(no)}</span>')


def cards(items):
    return '<div class="cards">' + "".join(f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>'
                                           for k, v in items) + "</div>"


def section(sid, title, body):
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>'


def note(text):
    return f'<p class="note">{esc(text)}</p>'


def page(title, subtitle, sections):
    nav = "".join(f'<a href="#{esc(sid)}">{esc(t)}</a>' for sid, t, _ in sections)
    body = "".join(section(sid, t, b) for sid, t, b in sections)
    made = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><div class=note>{esc(subtitle)} · made {esc(made)}</div>"
            f"<nav>{nav}</nav></header><main>{body}</main></body></html>\n")
