"""Gallery changes under a running daemon's ``LiveGallery``, in process, with a real SQLite gallery and hnswlib index
(synthetic 128-d templates, no models): a gallery.db overwritten with garbage, deleted, or the folder replaced by
another gallery is noticed at the next refresh, nobody matches meanwhile, one ``degraded`` line per episode, and the
gallery recovers by itself, loaded whole; after remove + compact by another process, no byte of the erased
templates is in the folder whatever the daemon's gallery does next. The daemon-level versions (SIGHUP, SIGTERM,
SIGKILL, MQTT status) are in test_fault_gallery_daemon.py."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from facegate.gallery import Gallery, PackBinding
from facegate.runtime.health import Health
from facegate.runtime.matching import LiveGallery

PACK = PackBinding("default", 128, "euclidean")


def _vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, (1, 128)).astype(np.float32)


def _make(folder: Path, people: dict[str, int]) -> None:
    """A gallery (index file saved, as `facegate enroll` leaves it) with one template per person."""
    with Gallery(folder, pack=PACK) as g:
        for name, seed in people.items():
            g.enrol(name, _vec(seed), PACK)


def _best(live: LiveGallery, seed: int) -> str | None:
    (cands,) = live.search(_vec(seed))
    return cands[0].name if cands and cands[0].score < 0.01 else None


def _lines(caplog, event: str, part: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if f"event={event} part={part}" in r.getMessage()]


def _live(folder: Path, health: Health) -> LiveGallery:
    return LiveGallery(Gallery(folder, pack=PACK, saves_index=False), health=health)


def test_garbage_overwrite_fails_closed_then_recovers_when_restored(tmp_path, caplog):
    folder = tmp_path / "g"
    _make(folder, {"Alice": 1, "Bob": 2})
    health = Health()
    live = _live(folder, health)
    try:
        assert _best(live, 1) == "Alice"
        db = folder / "gallery.db"
        good = db.read_bytes()
        with open(db, "r+b") as f:  # overwritten in place: same inode, the open connection would not notice
            f.write(np.random.default_rng(9).bytes(len(good)))
        with caplog.at_level(logging.INFO, logger="facegate"):
            for _ in range(3):
                assert live.refresh() is False
                assert _best(live, 1) is None and live.search(_vec(2)) == [[]]
            assert health.degraded("gallery") and health.state == "degraded"
            assert "not an SQLite database" in health.snapshot()["parts"]["gallery"]["reason"]
            with open(db, "r+b") as f:
                f.write(good)
            assert live.refresh() is True
        assert _best(live, 1) == "Alice" and _best(live, 2) == "Bob"
        assert health.state == "ok"
        assert len(_lines(caplog, "degraded", "gallery")) == 1 and len(_lines(caplog, "recovered", "gallery")) == 1
        assert health.snapshot()["parts"]["gallery"]["episodes"] == 1
    finally:
        live.close()


def test_missing_database_fails_closed_and_is_not_recreated(tmp_path, caplog):
    folder = tmp_path / "g"
    _make(folder, {"Alice": 1})
    health = Health()
    live = _live(folder, health)
    try:
        db = folder / "gallery.db"
        db.rename(tmp_path / "aside.db")
        with caplog.at_level(logging.WARNING, logger="facegate"):
            assert live.refresh() is False
            assert live.refresh() is False
        assert _best(live, 1) is None and health.degraded("gallery")
        assert not db.exists()  # the daemon never creates an empty gallery in its place
        (tmp_path / "aside.db").rename(db)
        assert live.refresh() is True and _best(live, 1) == "Alice" and health.state == "ok"
        assert len(_lines(caplog, "degraded", "gallery")) == 1
    finally:
        live.close()


def test_folder_replaced_by_another_gallery_is_loaded_whole_never_merged(tmp_path, caplog):
    folder, other = tmp_path / "g", tmp_path / "other"
    _make(folder, {"Alice": 1, "Bob": 2})
    _make(other, {"Carol": 3, "Bob": 4})  # another gallery: its own ids, its own Bob
    health = Health()
    live = _live(folder, health)
    try:
        assert _best(live, 1) == "Alice"
        folder.rename(tmp_path / "old")
        other.rename(folder)
        with caplog.at_level(logging.INFO, logger="facegate"):
            assert live.refresh() is True
        assert _best(live, 1) is None and _best(live, 2) is None  # nothing of the old gallery remains
        assert _best(live, 3) == "Carol" and _best(live, 4) == "Bob"
        assert health.state == "ok" and health.snapshot()["parts"]["gallery"]["episodes"] == 1
        (degraded,) = _lines(caplog, "degraded", "gallery")
        assert "another gallery" in degraded.getMessage()
        assert "event=gallery_replaced" in caplog.text and len(_lines(caplog, "recovered", "gallery")) == 1
    finally:
        live.close()


def test_gallery_bound_to_another_pack_swapped_in_fails_closed(tmp_path):
    folder, other = tmp_path / "g", tmp_path / "other"
    _make(folder, {"Alice": 1})
    arc = PackBinding("arcface-test", 64, "cosine")
    with Gallery(other, pack=arc) as g:
        g.enrol("Zed", np.ones((1, 64), np.float32), arc)
    health = Health()
    live = _live(folder, health)
    try:
        folder.rename(tmp_path / "old")
        other.rename(folder)
        assert live.refresh() is False and live.refresh() is False
        assert _best(live, 1) is None and health.degraded("gallery")
        assert "arcface-test" in health.snapshot()["parts"]["gallery"]["reason"]
    finally:
        live.close()


def _template_bytes(folder: Path, name: str) -> bytes:
    import sqlite3

    with sqlite3.connect(folder / "gallery.db") as db:
        (blob,) = db.execute("SELECT t.embedding FROM templates t JOIN identities i ON i.id = t.identity_id "
                             "WHERE i.name = ?", (name,)).fetchone()
    return blob


def folder_holds(folder: Path, blob: bytes, window: int = 32) -> list[str]:
    """Files of ``folder`` holding any ``window``-byte slice of ``blob`` (a float32 template)."""
    pieces = [blob[i : i + window] for i in range(0, len(blob) - window + 1, window)]
    return sorted(p.name for p in folder.iterdir() if p.is_file()
                  and any(piece in p.read_bytes() for piece in pieces))


@pytest.mark.parametrize("then", ["refresh", "close"])
def test_no_erased_template_bytes_after_remove_and_compact(tmp_path, then):
    folder = tmp_path / "g"
    _make(folder, {"Alice": 1, "Bob": 2})
    blob = _template_bytes(folder, "Alice")
    assert folder_holds(folder, blob)  # the probe works: the bytes are there before the erasure
    live = _live(folder, Health())
    try:
        assert _best(live, 1) == "Alice"
        with Gallery(folder, pack=PACK) as writer:  # another process: `gallery remove` then `gallery compact`
            writer.remove("Alice")
            writer.compact()
        assert folder_holds(folder, blob) == []
        assert live.refresh() is True and _best(live, 1) is None and _best(live, 2) == "Bob"
        if then == "close":
            live.close()
        assert folder_holds(folder, blob) == [], "the daemon's gallery wrote the erased template back"
    finally:
        live.close()


def test_a_copy_of_the_same_gallery_restored_by_rename_is_reopened(tmp_path):
    """A restore (`mv backup gallery.db`): same gallery id, another file; the open connection would keep reading
    the old one, so the new file is loaded whole."""
    folder = tmp_path / "g"
    _make(folder, {"Alice": 1})
    backup = tmp_path / "backup"
    shutil.copytree(folder, backup)
    live = _live(folder, Health())
    try:
        with Gallery(folder, pack=PACK) as writer:
            writer.remove("Alice")
        assert live.refresh() is True and _best(live, 1) is None
        (backup / "gallery.db").replace(folder / "gallery.db")
        assert live.refresh() is True and _best(live, 1) == "Alice"
    finally:
        live.close()
