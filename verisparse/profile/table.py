"""The text tables `verisparse profile` prints."""
from __future__ import annotations

COLUMNS = [("runtime", "{runtime}"), ("thr", "{threads}"), ("load ms", "{load_ms:.1f}"),
           ("first ms", "{first_inference_ms:.2f}"), ("p50 ms", "{p50_ms:.3f}"), ("p90 ms", "{p90_ms:.3f}"),
           ("p99 ms", "{p99_ms:.3f}"), ("max ms", "{max_ms:.3f}"), ("inf/s", "{inferences_per_s:.0f}"),
           ("peak RSS MiB", "{peak_rss_mib:.0f}")]


def _grid(header, rows) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def machine_line(m: dict) -> str:
    s = f"{m['model']} ({m['machine']}, {m['cores']} cores, governor {m['governor'] or 'n/a'}"
    temps = m.get("temperatures_before") or {}
    if temps:
        after = m.get("temperatures_after") or {}
        s += ", " + ", ".join(f"{k} {v:.0f}->{after.get(k, v):.0f} C" for k, v in temps.items())
    th = m.get("throttling")
    if th:
        s += f", throttled={th['raw']}"
    s += ")"
    return ("EMULATED under qemu: " + s) if m.get("emulated") else s


def bytes_line(bc: dict | None, runtime: str, threads: int) -> str:
    if not bc or "skipped" in bc:
        return "-"
    if runtime == "litert-ref":
        return "reference"
    c = bc["runtimes"].get(f"{runtime}/{threads}")
    if c is None:
        return "-"
    if c["identical"]:
        return "identical"
    n = c["class_changes"]
    s = f"{c['differing_outputs']}/{c['outputs']} off <= {c['max_lsb']} LSB, {n} class change{'s' * (n != 1)}"
    margins = [a["reference_margin_lsb"] for a in c.get("class_changes_at", [])]
    if margins:  # profiles written before the margins were recorded lack them
        s += " (where the reference was a tie)" if max(margins) == 0 else f" (reference margin <= {max(margins)} LSB)"
    return s


def artifact_table(a: dict) -> str:
    bc = a.get("bytes_check")
    extra = ["bytes vs reference"] if bc else []
    rows = [[f.format(**r) for _, f in COLUMNS] + ([bytes_line(bc, r["runtime"], r["threads"])] if bc else [])
            for r in a["rows"]]
    return _grid([h for h, _ in COLUMNS] + extra, rows)


def bytes_summary(a: dict) -> list[str]:
    bc = a.get("bytes_check")
    if not bc:
        return []
    if "skipped" in bc:
        return [f"bytes check: skipped ({bc['skipped']})"]
    out = [f"bytes check: {bc['vectors']} vectors ({bc['vectors_source']}), reference outputs sha256 "
           f"{bc['reference_outputs_sha256'][:16]}"]
    seen = bc.get("recorded")
    if seen:
        out.append(f"reference bytes {'EQUAL' if seen['equal'] else 'DIFFER from'} those recorded on {seen['machine']} "
                   f"({seen['created']}) for the same vectors")
    cert = bc.get("certificate")
    if cert:
        if cert["covers_this_model"]:
            exact = ", ".join(cert["runtimes_computing_it_exactly"])
            out.append(f"certificate {cert['file']} (eps {cert['eps']}, verified accuracy "
                       f"{cert['verified_accuracy']:.1%}) covers this model; exactly its int8 arithmetic: {exact}")
        else:
            out.append(f"certificate {cert['file']} does NOT cover this model (different bytes): re-verify it")
    return out


def compare_table(artifacts: list[dict]) -> str:
    """p50 latency per runtime and thread count, one column per model, speed relative to the first."""
    keys = []
    for a in artifacts:
        keys += [(r["runtime"], r["threads"]) for r in a["rows"] if (r["runtime"], r["threads"]) not in keys]
    header = ["runtime", "thr"] + [a["label"] for a in artifacts]
    rows = []
    for rt, t in keys:
        base, row = None, [rt, str(t)]
        for a in artifacts:
            r = next((r for r in a["rows"] if (r["runtime"], r["threads"]) == (rt, t)), None)
            if r is None:
                row.append("-")
                continue
            base = base or r["p50_ms"]
            row.append(f"{r['p50_ms']:.3f} ms" + (f" ({base / r['p50_ms']:.2f}x)" if base != r["p50_ms"] else ""))
        rows.append(row)
    return "p50 latency (speed-up against the first model that has the row)\n" + _grid(header, rows)
