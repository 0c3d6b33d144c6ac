"""The gallery store: files before rows, delete removes both, several writers at once, and a server killed
with SIGKILL in the middle of generating leaves no row without its files."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from muselab.serve.gallery import Generation, SQLiteGallery, new_id


def _add(store: SQLiteGallery, model: str = "m", text: str = "hello", created: float | None = None) -> Generation:
    staged = store.staging()
    (staged / "sample_000.txt").write_text(text)
    (staged / "sample_000.txt.json").write_text('{"ai_generated": true}')
    gen = Generation(new_id(), model, "text-lm", "abc", "text", 1, {"prompt": text}, {}, {}, {"texts": [text]})
    if created is not None:
        gen.created = created
    return store.add(gen, staged)


def test_rows_list_filter_page_and_delete_with_files(tmp_path: Path) -> None:
    store = SQLiteGallery(tmp_path)
    made = [_add(store, "a" if i % 2 else "b", f"text {i}", created=1000.0 + i) for i in range(5)]
    items, total = store.list(model="a", limit=1)
    assert total == 2 and [g.id for g in items] == [made[3].id]
    assert [g.id for g in store.list(model="a", limit=1, offset=1)[0]] == [made[1].id]
    assert store.list(since=1003.0)[1] == 2 and store.list(until=1001.0)[1] == 1
    item = next(a for a in made[0].artifacts if a.role == "item")
    assert store.artifact(item.id).path.read_text() == "text 0"
    assert store.delete(made[0].id) and store.get(made[0].id) is None
    assert store.artifact(item.id) is None and not (tmp_path / "files" / made[0].id).exists()
    assert store.delete(made[0].id) is False
    assert sqlite3.connect(tmp_path / "gallery.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failed_commit_leaves_no_files_and_strays_are_swept(tmp_path: Path) -> None:
    store = SQLiteGallery(tmp_path)
    first = _add(store)
    staged = store.staging()
    (staged / "x.txt").write_text("x")
    twin = Generation(first.id, "m", "text-lm", "abc", "text", 1, {}, {}, {}, {})  # same id: never overwritten
    with pytest.raises(OSError):
        store.add(twin, staged)
    assert (tmp_path / "files" / first.id / "sample_000.txt").read_text() == "hello"
    broken = Generation(new_id(), None, "text-lm", "abc", "text", 1, {}, {}, {}, {})  # the row cannot commit
    with pytest.raises(sqlite3.IntegrityError):
        store.add(broken, staged)
    assert [p.name for p in (tmp_path / "files").iterdir()] == [first.id]  # its files went with it
    stray = store.staging()
    orphan = tmp_path / "files" / new_id()
    orphan.mkdir()
    old = time.time() - 7200
    for path in (stray, orphan):
        os.utime(path, (old, old))
    assert SQLiteGallery(tmp_path).get(first.id) is not None
    assert not stray.exists() and not orphan.exists()


def test_an_entry_gone_between_listing_and_look_is_not_stale(tmp_path: Path) -> None:
    # another worker may move its staging folder into place while this one sweeps: that is no error
    from muselab.serve.gallery import _older_than
    old = tmp_path / "old"
    old.mkdir()
    os.utime(old, (time.time() - 7200,) * 2)
    assert _older_than(old, time.time() - 3600) and not _older_than(old, time.time() - 10_000)
    assert not _older_than(tmp_path / "moved away", time.time())


def _writer(root: str, count: int) -> None:
    store = SQLiteGallery(root)
    for i in range(count):
        _add(store, f"p{os.getpid()}", f"text {i}")


def test_several_processes_write_at_once(tmp_path: Path) -> None:
    SQLiteGallery(tmp_path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(tmp_path), 15)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    items, total = SQLiteGallery(tmp_path).list(limit=100)
    assert total == 45 and all(a.path.is_file() for g in items for a in g.artifacts)


@pytest.mark.slow
def test_sigkill_during_generation_keeps_every_completed_generation_whole(serve_runs, tmp_path, server_process
                                                                        ) -> None:
    gallery = tmp_path / "gallery"
    runs = [serve_runs["poems"], serve_runs["digits"]]
    process, url = server_process(runs, gallery, "--max-tokens", "100000", "--time-limit", "600")
    completed: list[str] = []
    stop = threading.Event()

    def client(model: str, body: dict) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set():
                try:
                    reply = http.post(f"/v1/models/{model}/generate", json=body)
                except httpx.HTTPError:
                    return  # the server is gone
                if reply.status_code == 200:
                    completed.append(reply.json()["id"])

    threads = [threading.Thread(target=client, args=("poems", {"max_new_tokens": 8})),
               threading.Thread(target=client, args=("digits", {"num_samples": 4})),
               threading.Thread(target=client, args=("poems", {"max_new_tokens": 50_000, "memorization": "off"}))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(completed) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    health = httpx.get(f"{url}/v1/health").json()
    assert health["pending"]["poems"] >= 1  # the long generation is running
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(completed) >= 4

    process, url = server_process(runs, gallery)
    try:
        listed = httpx.get(f"{url}/v1/gallery", params={"limit": 100}).json()
        ids = {g["id"] for g in listed["items"]}
        assert set(completed) <= ids and listed["total"] == len(ids)
        for gen in listed["items"]:
            for artifact in gen["artifacts"]:
                assert httpx.get(f"{url}{artifact['url']}").status_code == 200, artifact
        assert sqlite3.connect(gallery / "gallery.sqlite").execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        process.terminate()
        process.wait(30)
