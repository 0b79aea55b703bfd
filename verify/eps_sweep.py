"""`verisparse verify --eps-sweep START:STOP:STEP`: verified accuracy against the radius.

The run at --eps (the certificate's own results) anchors the sweep, so the sweep's point at
that radius is exactly what a plain `verify --eps` reports. The other radii reuse what the
balls' nesting proves (the eps-ball is inside every larger one):
  - below the anchor, a sample verified at a larger radius is verified here: not re-run;
  - above the anchor, a sample falsified at a smaller radius is falsified here (its
    counterexample is inside this ball too): not re-run; and a sample that was not verified
    at the next smaller radius is not counted as verified here, so the curve never rises.
"""
from __future__ import annotations

import numpy as np

from verisparse.errors import VeriSparseError

MAX_POINTS = 200


def parse(spec):
    """'START:STOP:STEP' -> sorted radii in (0, 1], STOP included when the grid hits it."""
    try:
        start, stop, step = (float(p) for p in str(spec).split(":"))
    except ValueError:
        raise VeriSparseError(f"--eps-sweep wants START:STOP:STEP, e.g. 0.01:0.2:0.01; got {spec!r}") from None
    if not (0 < start <= stop <= 1) or step <= 0:
        raise VeriSparseError(f"--eps-sweep {spec}: need 0 < START <= STOP <= 1 and STEP > 0")
    count = int(np.floor((stop - start) / step + 1e-9)) + 1
    if count > MAX_POINTS:
        raise VeriSparseError(f"--eps-sweep {spec} has {count} radii; use at most {MAX_POINTS} (a larger STEP)")
    return sorted({round(start + k * step, 10) for k in range(count)})


def sweep(art, x, y, radii, anchor_eps, anchor_results, method, time_limit, device="cpu"):
    """-> (points, certified_radius): points are dicts {eps, verified, falsified, unknown,
    verified_accuracy} sorted by eps; certified_radius[i] is the largest radius of the sweep
    at which sample i is verified (0.0 when none), in the order of anchor_results."""
    n = len(y)
    anchor = round(float(anchor_eps), 10)
    status = {anchor: [r.status for r in anchor_results]}
    radii = sorted(set(radii) | {anchor})
    above = [e for e in radii if e > anchor]
    below = [e for e in radii if e < anchor][::-1]
    prev = anchor
    for e in above:                       # ascending: falsified stays falsified
        st = list(status[prev])
        todo = [i for i in range(n) if st[i] != "falsified"]
        for i, r in zip(todo, _run(art, x, y, todo, e, method, time_limit, device)):
            st[i] = "unknown" if r.status == "verified" and status[prev][i] != "verified" else r.status
        status[e], prev = st, e
    prev = anchor
    for e in below:                       # descending: verified stays verified
        st = list(status[prev])
        todo = [i for i in range(n) if st[i] != "verified"]
        for i, r in zip(todo, _run(art, x, y, todo, e, method, time_limit, device)):
            st[i] = r.status
        status[e], prev = st, e
    points = []
    for e in radii:
        st = status[e]
        v, f = st.count("verified"), st.count("falsified")
        points.append(dict(eps=e, verified=v, falsified=f, unknown=n - v - f,
                           verified_accuracy=v / n if n else 0.0))
    certified = [max([e for e in radii if status[e][i] == "verified"], default=0.0) for i in range(n)]
    return points, certified


def _run(art, x, y, todo, eps, method, time_limit, device):
    if not todo:
        return []
    return art.verify(x[todo], y[todo], eps, method, time_limit=time_limit, device=device)
