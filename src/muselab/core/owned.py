"""A folder that records what muselab wrote into it, so that `--overwrite` removes exactly that.

A marker file (e.g. `.muselab-run.json`) lists the folder's top-level entries that muselab made. Writers
record a name before they write it (`folder / name` does that while the folder records), and code that
writes through other routes runs inside `folder.writing()`, which records whatever appeared meanwhile.
`claim(overwrite=True)` deletes only the recorded entries; a folder without the marker is never deleted.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from muselab.core.errors import RunExistsError
from muselab.core.io import atomic_write_json

MARKER_FORMAT = 1


def _top_level(name: str | Path) -> str:
    parts = Path(name).parts
    return parts[0] if parts else ""


def _is_plain_name(name: object) -> bool:
    """A marker is read from disk: only plain names inside the folder may ever be deleted."""
    return (isinstance(name, str) and name not in {"", ".", ".."} and "/" not in name and "\\" not in name
            and "\0" not in name)


class OwnedFolder:
    """A folder muselab writes into; subclasses name their marker, what they hold and how older ones look."""

    MARKER = ".muselab-folder.json"
    WHAT = "folder"  # "a {WHAT}" in messages
    # Top-level names that, all present without a marker, mean an older muselab made the folder.
    LEGACY_NAMES: tuple[str, ...] = ()
    # How to go on when the folder holds one already and --overwrite was not given.
    KEEP_HINT = "pass --overwrite to replace it or choose another --out"
    # How to go on when an older muselab made it (no marker): --overwrite cannot help.
    LEGACY_HINT = "delete or move it by hand, or choose another --out"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries: set[str] | None = None  # None: not recording (e.g. a run loaded to generate)

    def __truediv__(self, name: str) -> Path:
        self.record(name)
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # -- the marker ------------------------------------------------------------------------------------
    @property
    def marker_path(self) -> Path:
        return self.path / self.MARKER

    def is_marked(self) -> bool:
        return self.marker_path.is_file()

    def looks_legacy(self) -> bool:
        return bool(self.LEGACY_NAMES) and all((self.path / n).exists() for n in self.LEGACY_NAMES)

    def recorded(self) -> list[str]:
        """The entries the marker lists (plain names only); [] when there is no marker."""
        if not self.is_marked():
            return []
        try:
            data = json.loads(self.marker_path.read_text(encoding="utf-8"))
            entries = data["entries"]
            if not isinstance(entries, list):
                raise TypeError
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise RunExistsError(f"'{self.marker_path}' (muselab's list of the files it wrote in '{self.path}') is "
                                 "damaged; delete or move the folder by hand, or choose another --out") from None
        return sorted({e for e in entries if _is_plain_name(e) and e != self.MARKER})

    def _save(self) -> None:
        assert self._entries is not None
        atomic_write_json(self.marker_path, {
            "format": MARKER_FORMAT, "kind": self.WHAT,
            "about": "what muselab wrote in this folder; --overwrite deletes these entries and nothing else",
            "entries": sorted(self._entries),
        })

    # -- recording -------------------------------------------------------------------------------------
    @property
    def recording(self) -> bool:
        return self._entries is not None

    def reopen(self) -> bool:
        """Go on recording into a folder made earlier (resume, evaluate). A folder without the marker (made by
        an older muselab) stays unrecorded: marking only the newest files would make --overwrite half-delete it."""
        if self.recording:
            return True
        if not self.is_marked():
            return False
        self._entries = set(self.recorded())
        return True

    def record(self, *names: str | Path) -> None:
        """Note top-level entries as muselab's (before writing them, so a crash mid-write leaves them listed)."""
        if self._entries is None:
            return
        new = {_top_level(n) for n in names} - self._entries - {self.MARKER}
        new = {n for n in new if _is_plain_name(n)}
        if new:
            self._entries |= new
            self._save()

    def _listing(self) -> set[str]:
        if not self.path.is_dir():
            return set()
        # skip the temporary files of atomic writes still in flight
        return {p.name for p in self.path.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))}

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Record every entry that appears while the block runs: for writers that take a plain folder path.
        Keep the block short: a file the user drops in meanwhile would count as muselab's."""
        before = self._listing()
        try:
            yield
        finally:
            self.record(*(self._listing() - before))

    # -- claiming --------------------------------------------------------------------------------------
    def claim(self, overwrite: bool) -> None:
        """Make the folder ready to be written afresh: delete what an earlier one recorded, never anything else."""
        where = f"--out '{self.path}'"
        if self.path.exists() and not self.path.is_dir():
            raise RunExistsError(f"{where} is a file; choose a directory path")
        if self.is_marked():
            if not overwrite:
                raise RunExistsError(f"{where} already holds a {self.WHAT}; {self.KEEP_HINT}")
            self._remove_recorded()
        elif self.path.is_dir() and any(self.path.iterdir()):
            if self.looks_legacy():
                raise RunExistsError(
                    f"{where} already holds a {self.WHAT} made by an older muselab, which did not record its files "
                    f"in {self.MARKER}, so --overwrite will not delete it; {self.LEGACY_HINT}")
            raise RunExistsError(f"{where} is a non-empty folder that muselab did not make (it has no {self.MARKER}); "
                                 "muselab never deletes it, even with --overwrite: choose an empty or new folder")
        self.path.mkdir(parents=True, exist_ok=True)
        self._entries = set()
        self._save()

    def _remove_recorded(self) -> None:
        for name in self.recorded():
            entry = self.path / name
            if entry.is_symlink() or entry.is_file():
                entry.unlink()  # a link is removed, never followed
            elif entry.is_dir():
                shutil.rmtree(entry)
        self.marker_path.unlink()
