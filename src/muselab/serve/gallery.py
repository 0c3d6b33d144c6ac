"""The gallery: every generation the server made, with its files, behind a small store interface.

`GalleryStore` is the contract the server talks to; `SQLiteGallery` keeps rows in an embedded SQLite
database (WAL mode, so several worker processes read while one writes) and files in a folder beside it.
A server database could replace it by keeping the same contract.

Durability: a generation's files are written into a private staging folder, made durable (fsync), moved
into place with one rename, and only then is its row committed. A crash (SIGKILL included) at any point
leaves either no row, or a row whose files all exist; what a crash strands (a staging folder, a folder
without a row) is swept on the next start once it is older than any generation can take.
"""

from __future__ import annotations

import json
import mimetypes
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from muselab.core.artifacts import MANIFEST_SUFFIX

__all__ = ["Artifact", "GalleryStore", "Generation", "SQLiteGallery", "new_id"]

ID_PATTERN = r"^[0-9a-f]{24}$"


def new_id() -> str:
    """A random, unguessable id (generations, artifacts, uploads)."""
    return secrets.token_hex(12)


@dataclass
class Artifact:
    """One stored file: a generated output, its manifest, or an upload."""

    id: str
    name: str
    media_type: str
    size: int
    role: str  # "item", "grid", "animation", "lines", "manifest", "sidecar", "upload"
    item: int | None = None  # the output's index within its generation, for items
    path: Path | None = None  # where it lies (never shown to clients)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "media_type": self.media_type, "size": self.size,
                "role": self.role, "item": self.item, "url": f"/v1/artifacts/{self.id}"}


@dataclass
class Generation:
    """One generation as the gallery keeps it."""

    id: str
    model: str
    recipe: str
    run_id: str
    kind: str
    seed: int | None
    controls: dict[str, Any]  # as the client asked (artifact ids, never paths), seed filled in
    verdict: dict[str, Any]  # moderation and memorization notes, refused items
    manifest: dict[str, Any]  # the manifest of the first item
    content: dict[str, Any]  # the result's JSON (texts, lines, counts), without large arrays
    created: float = field(default_factory=time.time)
    artifacts: list[Artifact] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "recipe": self.recipe, "run_id": self.run_id, "kind": self.kind,
                "seed": self.seed, "controls": self.controls, "verdict": self.verdict, "manifest": self.manifest,
                "content": self.content, "created": datetime.fromtimestamp(self.created, UTC).isoformat(),
                "ai_generated": True, "artifacts": [a.to_json() for a in self.artifacts]}


class GalleryStore(Protocol):
    """What the server needs from a gallery. Files are staged by the caller, then handed over whole."""

    def staging(self) -> Path:
        """A fresh, empty folder to write a generation's files into (then pass it to `add`)."""

    def add(self, generation: Generation, staged: Path) -> Generation:
        """Move the staged files into the store, then commit the row; returns it with its artifacts."""

    def list(self, model: str | None = None, since: float | None = None, until: float | None = None,
             limit: int = 20, offset: int = 0) -> tuple[list[Generation], int]:
        """Newest first, filtered by model and creation time; and how many match in all."""

    def get(self, generation_id: str) -> Generation | None: ...

    def delete(self, generation_id: str) -> bool:
        """Remove the row, then its files; False when there was no such generation."""

    def artifact(self, artifact_id: str) -> Artifact | None:
        """A stored file by id (with its path), generated or uploaded."""

    def add_upload(self, name: str, data: bytes) -> Artifact:
        """Keep an uploaded file (an input for a control that reads a file) under a new artifact id."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, recipe TEXT NOT NULL, run_id TEXT NOT NULL, kind TEXT NOT NULL,
    seed INTEGER, controls TEXT NOT NULL, verdict TEXT NOT NULL, manifest TEXT NOT NULL, content TEXT NOT NULL,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS generations_model_created ON generations (model, created);
CREATE INDEX IF NOT EXISTS generations_created ON generations (created);
CREATE TABLE IF NOT EXISTS artifacts (
    id TEXT PRIMARY KEY, generation_id TEXT REFERENCES generations (id) ON DELETE CASCADE, name TEXT NOT NULL,
    media_type TEXT NOT NULL, size INTEGER NOT NULL, role TEXT NOT NULL, item INTEGER, relpath TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS artifacts_generation ON artifacts (generation_id);
"""

_ROLES = {"grid.png": "grid", "animation.gif": "animation", "outputs.tsv": "lines"}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(folder)


def media_type(name: str) -> str:
    if name.endswith(".jsonl"):
        return "application/jsonl"
    if name.endswith(".tsv"):
        return "text/tab-separated-values; charset=utf-8"
    guessed = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return f"{guessed}; charset=utf-8" if guessed.startswith("text/") else guessed


class SQLiteGallery:
    """The embedded gallery: `ROOT/gallery.sqlite` (WAL), `ROOT/files/ID/...`, `ROOT/uploads/ID/NAME`."""

    def __init__(self, root: str | Path, stale_after_s: float = 3600.0) -> None:
        self.root = Path(root)
        self.files, self.uploads, self._staging = self.root / "files", self.root / "uploads", self.root / ".staging"
        for folder in (self.files, self.uploads, self._staging):
            folder.mkdir(parents=True, exist_ok=True)
        self.db = self.root / "gallery.sqlite"
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
        self.sweep(stale_after_s)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # one connection per call: safe from any thread, and from several processes (WAL + busy timeout)
        con = sqlite3.connect(self.db, timeout=30.0, isolation_level=None)
        try:
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA busy_timeout=30000")
            yield con
        finally:
            con.close()

    # -- writing ------------------------------------------------------------------------------------------
    def staging(self) -> Path:
        folder = self._staging / f"{new_id()}"
        folder.mkdir()
        return folder

    def add(self, generation: Generation, staged: Path) -> Generation:
        target = self.files / generation.id
        artifacts = self._artifacts_of(staged, target)
        _fsync_tree(staged)
        os.replace(staged, target)  # one rename: the files appear whole, or not at all
        _fsync_dir(self.files)
        generation.artifacts = artifacts
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("INSERT INTO generations VALUES (?,?,?,?,?,?,?,?,?,?,?)", (
                    generation.id, generation.model, generation.recipe, generation.run_id, generation.kind,
                    generation.seed, json.dumps(generation.controls), json.dumps(generation.verdict),
                    json.dumps(generation.manifest, default=str), json.dumps(generation.content, default=str),
                    generation.created))
                con.executemany("INSERT INTO artifacts VALUES (?,?,?,?,?,?,?,?)", [
                    (a.id, generation.id, a.name, a.media_type, a.size, a.role, a.item,
                     str(Path(a.path).relative_to(self.root))) for a in artifacts])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                shutil.rmtree(target, ignore_errors=True)
                raise
        return generation

    def _artifacts_of(self, staged: Path, target: Path) -> list[Artifact]:
        found = []
        outputs = sorted(p for p in staged.rglob("*") if p.is_file() and not p.name.endswith(MANIFEST_SUFFIX))
        items = [p for p in outputs if p.name not in _ROLES and not p.name.endswith(".words.json")]
        index = {p: i for i, p in enumerate(items)}
        for path in outputs:
            role = _ROLES.get(path.name, "sidecar" if path.name.endswith(".words.json") else "item")
            where = target / path.relative_to(staged)
            found.append(Artifact(new_id(), path.name, media_type(path.name), path.stat().st_size, role,
                                  index.get(path), where))
            side = path.with_name(path.name + MANIFEST_SUFFIX)
            if side.is_file():
                found.append(Artifact(new_id(), side.name, "application/json", side.stat().st_size, "manifest",
                                      index.get(path), target / side.relative_to(staged)))
        return found

    def add_upload(self, name: str, data: bytes) -> Artifact:
        artifact_id = new_id()
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(name).name)[-80:].lstrip(".") or "upload"
        folder = self._staging / f"upload-{artifact_id}"
        folder.mkdir()
        path = folder / safe
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        target = self.uploads / artifact_id
        os.replace(folder, target)
        _fsync_dir(self.uploads)
        artifact = Artifact(artifact_id, safe, media_type(safe), len(data), "upload", None, target / safe)
        with self._connect() as con:
            con.execute("INSERT INTO artifacts VALUES (?,?,?,?,?,?,?,?)", (
                artifact.id, None, artifact.name, artifact.media_type, artifact.size, artifact.role, None,
                str((target / safe).relative_to(self.root))))
        return artifact

    def delete(self, generation_id: str) -> bool:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM artifacts WHERE generation_id = ?", (generation_id,))
            gone = con.execute("DELETE FROM generations WHERE id = ?", (generation_id,)).rowcount
            con.execute("COMMIT")
        # the row goes first: a crash here leaves files without a row (swept later), never a row without files
        shutil.rmtree(self.files / generation_id, ignore_errors=True)
        return bool(gone)

    # -- reading ------------------------------------------------------------------------------------------
    def _generation(self, con: sqlite3.Connection, row: tuple[Any, ...]) -> Generation:
        gen = Generation(id=row[0], model=row[1], recipe=row[2], run_id=row[3], kind=row[4], seed=row[5],
                         controls=json.loads(row[6]), verdict=json.loads(row[7]), manifest=json.loads(row[8]),
                         content=json.loads(row[9]), created=row[10])
        gen.artifacts = [self._artifact(a) for a in con.execute(
            "SELECT id, name, media_type, size, role, item, relpath FROM artifacts WHERE generation_id = ? "
            "ORDER BY rowid", (gen.id,))]
        return gen

    def _artifact(self, row: tuple[Any, ...]) -> Artifact:
        return Artifact(row[0], row[1], row[2], row[3], row[4], row[5], self.root / row[6])

    def list(self, model: str | None = None, since: float | None = None, until: float | None = None,
             limit: int = 20, offset: int = 0) -> tuple[list[Generation], int]:
        where, args = [], []
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if since is not None:
            where.append("created >= ?")
            args.append(since)
        if until is not None:
            where.append("created < ?")
            args.append(until)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._connect() as con:
            con.execute("BEGIN")  # one snapshot for the page and the count
            total = con.execute(f"SELECT COUNT(*) FROM generations{clause}", args).fetchone()[0]
            rows = con.execute(f"SELECT * FROM generations{clause} ORDER BY created DESC, id LIMIT ? OFFSET ?",
                               [*args, limit, offset]).fetchall()
            found = [self._generation(con, row) for row in rows]
            con.execute("COMMIT")
        return found, total

    def get(self, generation_id: str) -> Generation | None:
        with self._connect() as con:
            row = con.execute("SELECT * FROM generations WHERE id = ?", (generation_id,)).fetchone()
            return self._generation(con, row) if row else None

    def artifact(self, artifact_id: str) -> Artifact | None:
        with self._connect() as con:
            row = con.execute("SELECT id, name, media_type, size, role, item, relpath FROM artifacts WHERE id = ?",
                              (artifact_id,)).fetchone()
        return self._artifact(row) if row else None

    # -- upkeep -------------------------------------------------------------------------------------------
    def sweep(self, stale_after_s: float) -> int:
        """Remove what a crash stranded: staging folders and folders without a row, once older than
        `stale_after_s` (younger ones may belong to a generation another worker is saving right now)."""
        cutoff = time.time() - stale_after_s
        removed = 0
        for entry in self._staging.iterdir():
            if _older_than(entry, cutoff):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed += 1
        with self._connect() as con:
            known = {row[0] for row in con.execute("SELECT id FROM generations")}
            uploads = {row[0] for row in con.execute("SELECT id FROM artifacts WHERE role = 'upload'")}
        for folder, ids in ((self.files, known), (self.uploads, uploads)):
            for entry in folder.iterdir():
                if entry.name not in ids and _older_than(entry, cutoff):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
        return removed


def _older_than(entry: Path, cutoff: float) -> bool:
    """Whether `entry` was last changed before `cutoff`; False once it is gone (another worker moved its
    staging folder into place, or swept it, between the listing and this look)."""
    try:
        return entry.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False
