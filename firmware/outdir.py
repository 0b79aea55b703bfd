"""The project folder `--out`: written so that nothing a user put there is ever lost.

A manifest (`.verisparse-firmware.json`) lists every file the generator wrote with its
sha256. A folder is written only when it is missing, empty, or a previous output (it has a
manifest); a previous output may hold other files (make's build/, fw.elf, the user's own),
which are never touched. Regenerating replaces and removes only listed files, and refuses
when a listed file was changed since it was written (its hash no longer matches), so edits
to main.c or a ported platform.c are not overwritten.

Every file is first written into a staging folder beside OUT; a new project is then one
rename, a previous output gets its files moved in one by one and the manifest last. A
failure before the move leaves OUT as it was."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from verisparse.errors import VeriSparseError
from verisparse.files import atomic_write

MANIFEST = ".verisparse-firmware.json"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?")  # what we write: a/b at most


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(hashes: dict[str, str]) -> bytes:
    return json.dumps(dict(generator="verisparse firmware", files=dict(sorted(hashes.items()))), indent=2).encode()


def _os_error(out: Path, e: OSError) -> VeriSparseError:
    return VeriSparseError(f"cannot write the firmware project to {out}: {e.strerror or e}; "
                           "pass an --out folder you can write")


def _listed(out: Path) -> dict[str, str]:
    """The manifest's {name: sha256}; refuses a manifest that is not one of ours."""
    try:
        m = json.loads((out / MANIFEST).read_text())
        files = m["files"]
        ok = isinstance(files, dict) and all(
            isinstance(k, str) and _NAME.fullmatch(k) and isinstance(v, str) and len(v) == 64 for k, v in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise VeriSparseError(f"{out / MANIFEST} is damaged or not VeriSparse's; delete {out} or pass another --out")
    return files


def _current_sha(path: Path) -> str | None:
    """sha256 of a regular file, None when it is absent; refuses links and folders in the way."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise VeriSparseError(f"{path} is a link or a folder where the firmware writes a file; move it away")
    return _sha(path.read_bytes()) if path.exists() else None


def _previous(out: Path, files: dict[str, bytes]) -> dict[str, str]:
    """The listed files of a previous output (empty for a new folder); refuses anything else."""
    if out.exists() and not out.is_dir():
        raise VeriSparseError(f"--out {out} is not a folder; pass a folder path")
    if not out.exists() or not any(out.iterdir()):
        return {}
    if not (out / MANIFEST).is_file():
        raise VeriSparseError(f"--out {out} is not empty and not a firmware project VeriSparse wrote (no {MANIFEST}); "
                              "its files would be overwritten: pass a new or empty folder (a project made by an "
                              "older VeriSparse has no manifest: delete it and run again)")
    listed = _listed(out)
    changed = []
    for name in sorted(set(listed) | set(files)):
        if (out / name.split("/")[0]).is_symlink():
            raise VeriSparseError(f"{out / name.split('/')[0]} is a link; the firmware does not write through links")
        now = _current_sha(out / name)
        if now is None:
            continue
        new = _sha(files[name]) if name in files else None
        if name in listed and now not in (listed[name], new):
            changed.append(name)
        elif name not in listed and now != new:
            changed.append(name)  # a file of the user's where the generator now writes one
    if changed:
        raise VeriSparseError(f"{out} holds files changed since `verisparse firmware` wrote them, or not written by "
                              f"it: {', '.join(changed)}; move them elsewhere (or delete them) and run again")
    return listed


def write_files(out: Path, files: dict[str, bytes]) -> None:
    """Write the project's files (name -> bytes) into out, as the module docstring says."""
    out = Path(os.path.realpath(out))  # a linked OUT is written where it points, staged beside that
    manifest = _manifest({n: _sha(d) for n, d in files.items()})
    try:
        listed = _previous(out, files)
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)  # mkdtemp's 0700 would become the project's
    except OSError as e:
        raise _os_error(out, e) from None
    try:
        for name, data in [*files.items(), (MANIFEST, manifest)]:
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            (stage / name).write_bytes(data)
        if not out.exists() or not any(out.iterdir()):
            os.replace(stage, out)  # a new project appears whole or not at all
            return
        for name in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, out / name)
        for name in set(listed) - set(files):  # listed, unchanged (checked above), no longer generated
            (out / name).unlink(missing_ok=True)
        os.replace(stage / MANIFEST, out / MANIFEST)
    except OSError as e:
        raise _os_error(out, e) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def replace_file(out: Path, name: str, data: bytes) -> None:
    """Rewrite one listed file of a project written by write_files, and its manifest entry."""
    listed = _listed(out)
    listed[name] = _sha(data)
    try:
        atomic_write(out / name, lambda f: f.write(data))
        atomic_write(out / MANIFEST, lambda f: f.write(_manifest(listed)))
    except OSError as e:
        raise _os_error(out, e) from None


def read_listed(out: Path, name: str) -> bytes | None:
    """A listed file's bytes when it is unchanged since written, else None."""
    try:
        listed = _listed(out) if (out / MANIFEST).is_file() else {}
        path = out / name
        if name in listed and path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            return data if _sha(data) == listed[name] else None
    except (OSError, VeriSparseError):
        pass
    return None
