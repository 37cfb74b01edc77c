"""A run directory's stage markers: which stages finished, what each wrote, and what a resume may trust.

A stage's marker ``stages/<name>.json`` holds its summary and, under ``artifacts``, the size and SHA-256 of
every file the stage wrote, so a resume notices a missing, truncated or altered artifact and runs that
stage and the later ones again instead of reading it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

from cca_tl._io import atomic_write_text, read_json
from cca_tl.errors import CorruptFileError

#: Files of a stage: relative path → (size, mtime in ns).
FileStates = dict[str, tuple[int, int]]


class StageMarkers:
    """The ``stages/`` bookkeeping of the run directory ``directory``."""

    #: Paths under a run directory no stage writes: its bookkeeping, and a sweep's own files.
    NOT_ARTIFACTS = ("stages", "sweep", "config.json", ".lock")
    #: What an atomic write killed half-way leaves: a staging directory, a replaced directory not yet removed, a
    #: temporary file (``tempfile``'s 8 random characters). Hidden, never read, safe to delete under the lock.
    LEFTOVER = re.compile(r"^\..+\.(staging-\w+|old-\d+|\w{8})$")

    def __init__(self, directory: Path):
        self.dir = directory

    def path(self, stage: str) -> Path:
        return self.dir / "stages" / f"{stage}.json"

    def done(self, stage: str) -> bool:
        """Whether ``stage`` finished. A marker that does not parse (a torn or edited file) is set aside as
        ``<stage>.json.broken`` with a notice, and the stage counts as not done: it runs again."""
        marker = self.path(stage)
        if not marker.exists():
            return False
        try:
            read_json(marker)
        except CorruptFileError as error:
            marker.replace(marker.with_name(marker.name + ".broken"))
            print(f"[cca-tl] {error} Set aside as {marker.name}.broken; the {stage} stage runs again.", flush=True)
            return False
        return True

    def info(self, stage: str) -> dict:
        """The marker's content ({} for a stage not done)."""
        return read_json(self.path(stage)) if self.done(stage) else {}

    def files(self) -> FileStates:
        """Every artifact-like file of the run directory (what a stage may have written)."""
        out = {}
        for path in self.dir.rglob("*"):
            rel = path.relative_to(self.dir)
            if rel.parts[0] in self.NOT_ARTIFACTS or path.name.startswith(".") or not path.is_file():
                continue
            stat = path.stat()
            out[rel.as_posix()] = (stat.st_size, stat.st_mtime_ns)
        return out

    def write(self, stage: str, info: dict[str, Any], before: FileStates) -> dict[str, Any]:
        """Mark ``stage`` done with ``info`` and the files it wrote (new or changed since ``before``)."""
        artifacts = {rel: dict(size=size, sha256=sha256(self.dir / rel))
                     for rel, (size, mtime) in sorted(self.files().items()) if before.get(rel) != (size, mtime)}
        info = dict(info, artifacts=artifacts)
        atomic_write_text(self.path(stage), json.dumps(info, indent=1, default=str))
        return info

    def first_broken(self, names: Sequence[str]) -> tuple[str, str] | None:
        """The first finished stage whose recorded artifacts are not there as written: (stage, why)."""
        for name in names:
            for rel, expected in self.info(name).get("artifacts", {}).items():  # older markers: none
                path = self.dir / rel
                if not path.exists():
                    return name, f"{rel} is missing"
                if path.stat().st_size != expected["size"]:
                    return name, f"{rel} has {path.stat().st_size} bytes, not the {expected['size']} written"
                if sha256(path) != expected["sha256"]:
                    return name, f"{rel} differs from what the stage wrote (checksum)"
        return None

    def set_aside_from(self, names: Sequence[str], stage: str, why: str) -> None:
        """Mark ``stage`` and every stage after it not done (their markers kept as ``.json.stale``)."""
        later = [n for n in names[list(names).index(stage):] if self.done(n)]
        for name in later:
            marker = self.path(name)
            marker.replace(marker.with_name(marker.name + ".stale"))
        print(f"[cca-tl] {why}: stage{'s' if len(later) > 1 else ''} {', '.join(later)} run again.", flush=True)

    def remove_leftovers(self) -> None:
        """Delete what killed writes left in the run directory (a sweep's own files are its business). Only
        under the run's lock: no other writer can be in the middle of one."""
        for path in sorted(self.dir.rglob(".*"), reverse=True):  # deepest first
            if self.LEFTOVER.match(path.name) and path.relative_to(self.dir).parts[0] != "sweep":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def kept(self, names: Sequence[str]) -> str:
        """What a failed run leaves: its finished stages (each written whole, so a resume can trust them)."""
        finished = [name for name in names if self.path(name).exists()]
        return (f"The finished stages ({', '.join(finished)}) are kept." if finished
                else "No stage had finished, so nothing is lost.")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
