"""Reference bytes recorded on another machine: a run directory's profile.json from the x86
box that made the model, copied to the Pi with it, lets the Pi's profile say whether its
reference kernels give the same bytes on the same vectors."""
from __future__ import annotations

from pathlib import Path

from verisparse.files import read_json


def _tag(machine: dict) -> str:
    return f"{machine.get('model')} ({machine.get('machine')}{', emulated' if machine.get('emulated') else ''})"


def compare_with_recorded(profile_json: Path, artifact: dict, machine: dict) -> dict | None:
    """How artifact's reference outputs compare with those profile_json recorded for the same
    model and vectors on a different machine; None when there is no such record."""
    try:
        old = read_json(profile_json)
        old_machine = old["machine"]
        prev = [a for a in old["artifacts"] if a.get("sha256") == artifact["sha256"] and "bytes_check" in a]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    bc = artifact.get("bytes_check", {})
    if "reference_outputs_sha256" not in bc or _tag(old_machine) == _tag(machine):
        return None
    for a in prev:
        if a["bytes_check"].get("vectors_sha256") == bc["vectors_sha256"]:
            return dict(machine=_tag(old_machine), created=old.get("created"),
                        equal=a["bytes_check"].get("reference_outputs_sha256") == bc["reference_outputs_sha256"])
    return None
