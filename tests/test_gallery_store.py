"""Gallery store + index without models: search against brute force, metrics, persistence, erasure, import/export."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from facegate.errors import GalleryError
from facegate.gallery import Gallery, PackBinding
from facegate.gallery.index import META_NAME

DLIB = PackBinding("default", 128, "euclidean")
ARC = PackBinding("arcface-test", 64, "cosine")


def clustered(n_ids: int, per_id: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Identity centres (n_ids×dim) and templates (n_ids×per_id×dim), float32, as in bench/gallery_bench.py."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 0.1, (n_ids, dim)).astype(np.float32)
    templates = centres[:, None, :] + rng.normal(0, 0.02, (n_ids, per_id, dim)).astype(np.float32)
    return centres, templates


def brute_force(gallery_vecs: np.ndarray, owners: list[str], probe: np.ndarray, metric: str, k: int):
    """Exact top-k identities (best template per identity) as (name, score) pairs, float64."""
    g = gallery_vecs.astype(np.float64)
    p = probe.astype(np.float64)
    if metric == "euclidean":
        scores = np.sqrt(((g - p) ** 2).sum(1))
        order = np.argsort(scores)
    else:
        scores = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ (p / np.linalg.norm(p))
        order = np.argsort(-scores)
    out, seen = [], set()
    for i in order:
        if owners[i] not in seen:
            seen.add(owners[i])
            out.append((owners[i], float(scores[i])))
        if len(out) == k:
            break
    return out


def fill(gallery: Gallery, pack: PackBinding, n_ids: int = 30, per_id: int = 3, seed: int = 0):
    centres, templates = clustered(n_ids, per_id, pack.dim, seed)
    for i in range(n_ids):
        gallery.enrol(f"person{i:03d}", templates[i], pack, groups=["staff"] if i % 2 else [])
    owners = [f"person{i:03d}" for i in range(n_ids) for _ in range(per_id)]
    return centres, templates.reshape(-1, pack.dim), owners


def test_empty_and_tiny_gallery(tmp_path: Path) -> None:
    g = Gallery(tmp_path / "g")
    assert g.search(np.zeros((2, 128), np.float32), k=5) == [[], []]
    g.enrol("solo", np.ones((1, 128), np.float32) * 0.1, DLIB)
    res = g.search(np.zeros((1, 128), np.float32), k=10)  # k far above the one template: no hnswlib error
    assert [m.name for m in res[0]] == ["solo"]
    assert res[0][0].score == pytest.approx(np.sqrt(128 * 0.01), rel=1e-5)  # Euclidean, not squared
    g.close()


@pytest.mark.parametrize("pack", [DLIB, ARC], ids=["euclidean", "cosine"])
def test_search_matches_brute_force(tmp_path: Path, pack: PackBinding) -> None:
    g = Gallery(tmp_path / "g")
    centres, flat, owners = fill(g, pack, n_ids=40, per_id=4)
    rng = np.random.default_rng(1)
    probes = centres[:25] + rng.normal(0, 0.03, (25, pack.dim)).astype(np.float32)
    results = g.search(probes, k=5)
    for probe, found in zip(probes, results, strict=True):
        exact = brute_force(flat, owners, probe, pack.metric, 5)
        assert [m.name for m in found] == [name for name, _ in exact]
        assert len({m.identity_id for m in found}) == 5  # best template per identity: no identity twice
        np.testing.assert_allclose([m.score for m in found], [s for _, s in exact], rtol=1e-4, atol=1e-5)
    g.close()


def test_pack_binding_is_enforced(tmp_path: Path) -> None:
    g = Gallery(tmp_path / "g")
    g.enrol("a", np.ones((1, 128), np.float32), DLIB)
    with pytest.raises(GalleryError, match="pack default"):
        g.enrol("b", np.ones((1, 64), np.float32), ARC)
    with pytest.raises(GalleryError, match="128"):
        g.enrol("b", np.ones((1, 64), np.float32), DLIB)
    with pytest.raises(GalleryError, match="NaN"):
        g.enrol("b", np.full((1, 128), np.nan, np.float32), DLIB)
    with pytest.raises(GalleryError, match="all-zero embedding is not a template of a face"):
        g.enrol("b", np.zeros((1, 128), np.float32), DLIB)
    g.close()
    with pytest.raises(GalleryError, match="different packs"):
        Gallery(tmp_path / "g", PackBinding("other", 128, "euclidean"))
    # "default" 128-d Euclidean is what facegate <= 0.1's built-in pack wrote: the message says what to do
    with pytest.raises(GalleryError, match="now called 'dlib'.*re-enrol"):
        Gallery(tmp_path / "g", PackBinding("default", 256, "fused"))


def test_reopen_loads_index_and_rebuilds_when_missing_or_corrupt(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    g = Gallery(folder)
    centres, flat, owners = fill(g, DLIB)
    g.remove("person003")
    expected = [[m.name for m in row] for row in g.search(centres, k=3)]
    g.close()
    meta = json.loads((folder / META_NAME).read_text())
    assert (folder / meta["file"]).is_file()

    def names_after_reopen() -> list[list[str]]:
        with Gallery(folder) as again:
            return [[m.name for m in row] for row in again.search(centres, k=3)]

    assert names_after_reopen() == expected  # loaded from the saved file
    (folder / meta["file"]).unlink()
    assert names_after_reopen() == expected  # rebuilt from SQLite
    meta = json.loads((folder / META_NAME).read_text())
    data = bytearray((folder / meta["file"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / meta["file"]).write_bytes(bytes(data))
    assert names_after_reopen() == expected  # checksum mismatch: ignored and rebuilt
    assert "person003" not in {n for row in expected for n in row}


def test_index_catches_up_with_another_writer(tmp_path: Path) -> None:
    """An index saved at an older generation is brought up to the store's state (adds and removals)."""
    folder = tmp_path / "g"
    with Gallery(folder) as g:
        centres, _, _ = fill(g, DLIB, n_ids=10)
    other = Gallery(folder)
    other.enrol("newcomer", centres[:1] + 0.5, DLIB)
    other.remove("person001")
    other._dirty = False  # simulate a writer that died before saving its index
    other.store.close()
    with Gallery(folder) as g:
        assert g.search(centres[:1] + 0.5, k=1)[0][0].name == "newcomer"
        assert all(m.name != "person001" for m in g.search(centres[1], k=10)[0])
        assert g.stats()["templates"] == 10 * 3 - 3 + 1


def test_remove_unknown_identity(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g") as g, pytest.raises(GalleryError, match="no identity 'nobody'"):
        g.remove("nobody")


def _files_contain(folder: Path, needle: bytes) -> list[str]:
    return [p.name for p in folder.iterdir() if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("pack", [DLIB, ARC], ids=["euclidean", "cosine"])
def test_erasure_after_remove_and_compact(tmp_path: Path, pack: PackBinding) -> None:
    folder = tmp_path / "g"
    g = Gallery(folder)
    centres, templates = clustered(20, 3, pack.dim, seed=5)
    for i in range(20):
        _, tids = g.enrol(f"p{i}", templates[i], pack)
        if i == 7:
            victim_ids = tids
    g.save()
    # The raw embeddings (SQLite) and the copies hnswlib stores (L2-normalised by hnswlib for cosine).
    needles = [v.astype("<f4").tobytes() for v in templates[7]]
    needles += [v.astype("<f4").tobytes() for v in g._index.stored_vectors(victim_ids)]
    for needle in needles:  # the test can see every one of them before erasure
        assert _files_contain(folder, needle)
    assert g.search(centres[7], k=1)[0][0].name == "p7"
    g.remove("p7")
    assert all(m.name != "p7" for m in g.search(centres[7], k=20)[0])
    g.compact()
    g.close()
    for needle in needles:
        assert _files_contain(folder, needle) == []
    with Gallery(folder) as again:
        assert all(m.name != "p7" for m in again.search(centres[7], k=20)[0])
        assert again.stats()["identities"] == 19
        assert again.search(centres[8], k=1)[0][0].name == "p8"
    db = sqlite3.connect(folder / "gallery.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_export_import_roundtrip_and_wrong_pack(tmp_path: Path) -> None:
    with Gallery(tmp_path / "a") as a:
        centres, _, _ = fill(a, DLIB, n_ids=8)
        counts = a.export(tmp_path / "a.jsonl")
        expected = [[m.name for m in row] for row in a.search(centres, k=2)]
    assert counts == {"identities": 8, "templates": 24}
    with Gallery(tmp_path / "b") as b:
        assert b.import_file(tmp_path / "a.jsonl") == {**counts, "skipped": 0}
        assert [[m.name for m in row] for row in b.search(centres, k=2)] == expected
        assert b.identity("person001").groups == ["staff"]
    with Gallery(tmp_path / "c") as c:
        c.enrol("x", np.ones((1, 64), np.float32), ARC)
        with pytest.raises(GalleryError, match="cannot be imported"):
            c.import_file(tmp_path / "a.jsonl")
        (tmp_path / "junk.jsonl").write_text("hello\n")
        with pytest.raises(GalleryError, match="not a facegate gallery export"):
            c.import_file(tmp_path / "junk.jsonl")
        with pytest.raises(GalleryError, match="no such file"):
            c.import_file(tmp_path / "missing.jsonl")


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    folder.mkdir()
    (folder / "gallery.db").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(GalleryError, match="cannot open the gallery database"):
        Gallery(folder)


def test_refresh_follows_another_process(tmp_path: Path) -> None:
    """A long-running reader (the daemon) picks up enrolments, removals and group changes made by another
    writer (the CLI) on refresh(), without a rebuild."""
    folder = tmp_path / "g"
    daemon = Gallery(folder)
    cli = Gallery(folder)
    assert daemon.refresh() is False  # nothing bound yet
    centres, _, _ = fill(cli, DLIB, n_ids=6)
    assert daemon.search(centres[0], k=1) == [[]]
    assert daemon.refresh() is True
    assert daemon.search(centres[0], k=1)[0][0].name == "person000"
    cli.remove("person000")
    cli.store.set_groups("person001", ["night-shift"])
    assert daemon.search(centres[0], k=1)[0][0].name == "person000"  # not yet refreshed
    assert daemon.refresh() is True
    assert all(m.name != "person000" for m in daemon.search(centres[0], k=6)[0])
    assert daemon.search(centres[1], k=1)[0][0].groups == ("night-shift",)
    assert daemon.refresh() is False
    cli.close()
    daemon.close()
