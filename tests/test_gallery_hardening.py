"""Gallery under hostile input, without models: corrupt records, a lost database, import, uniqueness under
concurrent writers, names, permissions and export. Real SQLite files, real subprocesses for the CLI."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cli_util import assert_user_error, run_cli
from conftest import need_shared

from facegate.errors import GalleryError
from facegate.gallery import Gallery, PackBinding

PACK = PackBinding("default", 128, "euclidean")


def make_gallery(folder: Path, n_ids: int = 3, per_id: int = 2, seed: int = 0) -> np.ndarray:
    """A closed gallery of ``n_ids`` identities ``p0…`` with ``per_id`` templates each; returns them N×128."""
    rng = np.random.default_rng(seed)
    vecs = rng.normal(0, 0.1, (n_ids, per_id, 128)).astype(np.float32)
    with Gallery(folder) as g:
        for i in range(n_ids):
            g.enrol(f"p{i}", vecs[i], PACK, groups=["staff"],
                    image_sha256=[f"{i:02d}{j:062d}" for j in range(per_id)])
    return vecs


def sql(folder: Path, *statements: str, params: tuple = ()) -> None:
    db = sqlite3.connect(folder / "gallery.db")
    for statement in statements:
        db.execute(statement, params if "?" in statement else ())
    db.commit()
    db.close()


def some_image() -> str:
    return str(need_shared("data", "enroll_examples", "knn_examples", "test", "obama1.jpg"))


# -- 1. corrupt template data ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_template_refuses_to_open(tmp_path: Path, value: float) -> None:
    folder = tmp_path / "g"
    vecs = make_gallery(folder)
    bad = vecs[1, 0].copy()
    bad[7] = value
    sql(folder, "UPDATE templates SET embedding=? WHERE id=3", params=(bad.astype("<f4").tobytes(),))
    with pytest.raises(GalleryError) as err:
        Gallery(folder)
    message = str(err.value)
    for needle in (str(folder), "template 3", "'p1'", "NaN or infinite", "restore the gallery from an export",
                   "DELETE FROM templates WHERE id=3"):
        assert needle in message, (needle, message)
    # The index file (saved before the corruption) must not let the gallery open around it.
    assert (folder / "index.json").is_file()
    assert_user_error(run_cli("gallery", "list", "--gallery", str(folder)), "template 3", "restore", code=1)
    assert_user_error(run_cli("identify", "--gallery", str(folder), some_image()), "template 3", code=1)


CORRUPTIONS = {
    "short blob": (("UPDATE templates SET embedding=zeroblob(100) WHERE id=2",), "template 2 of identity 'p0' is 100"),
    "text blob": (("UPDATE templates SET embedding='abc' WHERE id=2",), "template 2"),
    "meta dim": (("UPDATE meta SET value='64' WHERE key='dim'",), "meta dim and stored templates disagree"),
    "meta dim not a number": (("UPDATE meta SET value='x' WHERE key='dim'",), "meta dim 'x'"),
    "groups not JSON": (("UPDATE identities SET groups='[staff' WHERE name='p2'",), "corrupt groups"),
    "groups not a list": (("UPDATE identities SET groups='{\"a\": 1}' WHERE name='p2'",), "corrupt groups"),
    "meta emptied": (("DELETE FROM meta",), "meta table"),
    "meta dropped": (("DROP TABLE meta",), "meta table"),
    "pack row lost": (("DELETE FROM meta WHERE key='pack'",), "meta table names no pack"),
    "generation garbage": (("UPDATE meta SET value='x' WHERE key='generation'",), "generation 'x'"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_corrupt_records_are_clear_errors_everywhere(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "g"
    make_gallery(folder)
    statements, needle = CORRUPTIONS[case]
    sql(folder, *statements)
    with pytest.raises(GalleryError, match="restore") as err:
        Gallery(folder)  # as the daemon opens it
    assert needle in str(err.value) and str(folder) in str(err.value), str(err.value)
    listed = run_cli("gallery", "list", "--gallery", str(folder))
    assert_user_error(listed, needle, code=1)
    assert listed.stdout == ""


def test_corrupt_records_via_identify(tmp_path: Path) -> None:
    """identify opens the gallery before loading any model: the error is immediate and clean."""
    folder = tmp_path / "g"
    make_gallery(folder)
    sql(folder, "UPDATE templates SET embedding=zeroblob(12) WHERE id=4")
    assert_user_error(run_cli("identify", "--gallery", str(folder), some_image()), "template 4", code=1)


def test_corrupt_quality_record_is_shown_not_fatal(tmp_path: Path) -> None:
    """Quality records are display-only; a broken one must not crash `gallery show`."""
    folder = tmp_path / "g"
    make_gallery(folder)
    sql(folder, "UPDATE templates SET quality='{oops' WHERE id=1")
    shown = run_cli("gallery", "show", "p0", "--gallery", str(folder))
    assert shown.code == 0, shown.stderr
    assert shown.json()["template_info"][0]["quality"] == {"corrupt": "{oops"}


# -- 2. lost database ----------------------------------------------------------------------------------------
def test_truncated_database_is_not_recreated(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    make_gallery(folder)
    (folder / "gallery.db").write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        (folder / f"gallery.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(GalleryError, match=r"empty \(0 bytes\).*refusing to start an empty gallery"):
        Gallery(folder)
    assert (folder / "gallery.db").stat().st_size == 0  # left as found, for forensics / restore
    for args in (("gallery", "list"), ("gallery", "import", str(tmp_path / "x.jsonl")),
                 ("enroll", "--name", "x", some_image()), ("identify", some_image())):
        assert_user_error(run_cli(*args, "--gallery", str(folder)), "0 bytes", "import", "--gallery", code=1)
    (folder / "gallery.db").unlink()
    with pytest.raises(GalleryError, match="gallery.db is missing"):
        Gallery(folder)
    assert_user_error(run_cli("gallery", "list", "--gallery", str(folder)), "is missing", code=1)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with Gallery(fresh) as g:  # a brand-new empty folder still becomes a gallery
        assert g.stats()["templates"] == 0


# -- 3. import -----------------------------------------------------------------------------------------------
def _export_lines(tmp_path: Path) -> list[str]:
    make_gallery(tmp_path / "src", n_ids=4)
    with Gallery(tmp_path / "src") as g:
        g.export(tmp_path / "src.jsonl")
    return (tmp_path / "src.jsonl").read_text().splitlines()


@pytest.mark.parametrize("damage", ["name null", "name empty", "name control", "garbage line", "nan embedding",
                                    "zero embedding", "short embedding", "bad group", "bad sha"])
def test_import_is_all_or_nothing(tmp_path: Path, damage: str) -> None:
    lines = _export_lines(tmp_path)
    row = json.loads(lines[3])
    if damage == "name null":
        row["name"] = None
    elif damage == "name empty":
        row["name"] = "   "
    elif damage == "name control":
        row["name"] = "evil\x1b[2Jname"
    elif damage == "nan embedding":
        row["templates"][0]["embedding"][5] = float("nan")
    elif damage == "zero embedding":  # not a face: refused like NaN (attack finding)
        row["templates"][0]["embedding"] = [0.0] * len(row["templates"][0]["embedding"])
    elif damage == "short embedding":
        row["templates"][0]["embedding"] = row["templates"][0]["embedding"][:100]
    elif damage == "bad group":
        row["groups"] = ["ok", ""]
    elif damage == "bad sha":
        row["templates"][0]["image_sha256"] = "../../etc/passwd"
    lines[3] = "{not json" if damage == "garbage line" else json.dumps(row)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    target = tmp_path / "dst"
    with Gallery(target) as g:
        with pytest.raises(GalleryError, match=r"bad\.jsonl:4: .*nothing was imported"):
            g.import_file(bad)
        assert g.stats()["templates"] == 0 and g.identities() == []
        assert g.store.binding() is None  # not even the pack binding was written
    result = run_cli("gallery", "import", str(bad), "--gallery", str(target))
    assert_user_error(result, "bad.jsonl:4", "nothing was imported", code=1)
    assert "\x1b" not in result.stderr  # the hostile name is escaped
    with Gallery(target) as g:
        assert g.stats()["templates"] == 0


def test_import_twice_or_into_its_source_adds_nothing(tmp_path: Path) -> None:
    lines = _export_lines(tmp_path)
    export = tmp_path / "src.jsonl"
    with Gallery(tmp_path / "src") as g:
        assert g.import_file(export) == {"identities": 4, "templates": 0, "skipped": 8}
        assert g.stats()["templates"] == 8
    # Templates without a source sha256 are recognised by their identical embedding.
    rows = [json.loads(line) for line in lines[1:]]
    for row in rows:
        for t in row["templates"]:
            t["image_sha256"] = None
    nosha = tmp_path / "nosha.jsonl"
    nosha.write_text("\n".join([lines[0], *map(json.dumps, rows)]) + "\n")
    first = run_cli("gallery", "import", str(export), "--gallery", str(tmp_path / "dst"))
    assert first.code == 0 and first.json()["templates"] == 8 and first.json()["skipped"] == 0, first.stderr
    for again in (export, nosha):
        second = run_cli("gallery", "import", str(again), "--gallery", str(tmp_path / "dst"))
        assert second.code == 0 and second.json()["templates"] == 0 and second.json()["skipped"] == 8, second.stderr
    with Gallery(tmp_path / "dst") as g:
        assert g.stats()["templates"] == 8
        assert g.search(rows[0]["templates"][0]["embedding"], k=1)[0][0].name == rows[0]["name"]


# -- 4. uniqueness under concurrent writers ------------------------------------------------------------------
WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from facegate.gallery import Gallery, PackBinding
    folder, seed = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(seed)  # different floats per process: only the sha can tell the duplicate
    with Gallery(folder) as g:
        added = 0
        for i in range(40):
            _, tids = g.enrol("same person", rng.normal(0, 0.1, (1, 128)).astype(np.float32),
                              PackBinding("default", 128, "euclidean"), image_sha256=[f"{i:064d}"])
            added += int(tids[0] >= 0)
    print(added)
    """
)


def test_concurrent_writers_cannot_duplicate_a_photo(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    with Gallery(folder) as g:
        g.enrol("someone else", np.ones((1, 128), np.float32), PACK)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(seed)], stdout=subprocess.PIPE,
                              text=True) for seed in (1, 2)]
    added = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(added) == 40, added  # each photo landed exactly once, whoever won the race
    db = sqlite3.connect(folder / "gallery.db")
    pairs = db.execute("SELECT identity_id, image_sha256, COUNT(*) FROM templates GROUP BY 1, 2 "
                       "HAVING COUNT(*) > 1").fetchall()
    db.close()
    assert pairs == []
    with Gallery(folder) as g:
        assert g.identity("same person").templates == 40 and g._index is not None and g._index.count == 41


def test_old_gallery_with_duplicates_is_migrated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "g"
    make_gallery(folder, n_ids=2)
    sql(folder, "DROP INDEX templates_identity_image",  # a gallery written before the UNIQUE index
        "INSERT INTO templates(identity_id, embedding, pack, metric, image_sha256, quality, created_at) "
        "SELECT identity_id, embedding, pack, metric, image_sha256, quality, created_at FROM templates WHERE id=1")
    with caplog.at_level(logging.WARNING), Gallery(folder) as g:
        assert g.stats()["templates"] == 4
        assert g.identity("p0").templates == 2
    assert "gallery_duplicates_removed" in caplog.text and "templates=1" in caplog.text
    with pytest.raises(sqlite3.IntegrityError):
        sql(folder, "INSERT INTO templates(identity_id, embedding, pack, metric, image_sha256, quality, created_at) "
                    "SELECT identity_id, embedding, pack, metric, image_sha256, quality, created_at FROM templates "
                    "WHERE id=1")


# -- 5. names and groups -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--name", "evil\x1b[31mred"], r"'evil\x1b[31mred'"),
    (["--name", "two\nlines"], r"'two\nlines'"),
    (["--name", "tab\there"], r"'tab\there'"),
    (["--name", "   "], "is empty"),
    (["--name", "x" * 201], "201 characters"),
    (["--name", "rtl\u202eoverride"], r"\u202e"),
    (["--name", "ok", "--group", ""], "group '' is empty"),
    (["--name", "ok", "--group", "night\tshift"], r"'night\tshift'"),
    (["--name", "ok", "--group", "g" * 65], "65 characters"),
], ids=["esc", "newline", "tab", "blank", "long", "bidi", "empty group", "group tab", "long group"])
def test_bad_names_and_groups_are_usage_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_cli("enroll", "--gallery", str(tmp_path / "g"), *args, some_image())
    assert_user_error(result, needle, code=2)
    assert not any(c in result.stderr for c in "\x1b\t\u202e"), result.stderr
    assert result.stderr.count("\n") == 1  # one line, no raw newline from the name


def test_bad_folder_name_in_from_dir(tmp_path: Path) -> None:
    person = tmp_path / "people" / "bad\x1b]0;pwned\x07name"
    person.mkdir(parents=True)
    (person / "a.jpg").write_bytes(Path(some_image()).read_bytes())
    result = run_cli("enroll", "--gallery", str(tmp_path / "g"), "--from-dir", str(tmp_path / "people"))
    assert_user_error(result, "--from-dir folder", r"\x1b", code=2)
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


def test_library_refuses_bad_names(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g") as g:
        for name in ("", "a\nb", "x" * 201, "bell\x07"):
            with pytest.raises(GalleryError, match="identity name"):
                g.enrol(name, np.ones((1, 128), np.float32), PACK)
        with pytest.raises(GalleryError, match="group"):
            g.enrol("fine", np.ones((1, 128), np.float32), PACK, groups=["a\x00b"])
        _, tids = g.enrol("  Zoë O’Brien  ", np.ones((1, 128), np.float32), PACK, groups=["staff"])
        assert g.identity("Zoë O’Brien").templates == 1 and len(tids) == 1


# -- 6. permissions ------------------------------------------------------------------------------------------
def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        folder = tmp_path / "g"
        g = Gallery(folder)
        g.enrol("p", np.ones((2, 128), np.float32), PACK)
        g.save()
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        g.export(tmp_path / "out.jsonl")
        g.close()
        export_mode = stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode)
        folder_mode = stat.S_IMODE(folder.stat().st_mode)
        # An existing folder with loose permissions is tightened when opened.
        os.chmod(folder, 0o777)
        os.chmod(folder / "gallery.db", 0o666)
        Gallery(folder).close()
        reopened = stat.S_IMODE(folder.stat().st_mode), stat.S_IMODE((folder / "gallery.db").stat().st_mode)
    finally:
        os.umask(old)
    assert {"gallery.db", "gallery.db-wal", "gallery.db-shm", "index.json"} <= set(modes), modes
    assert any(n.startswith("index-") for n in modes)
    assert set(modes.values()) == {0o600}, modes
    assert folder_mode == 0o700 and export_mode == 0o600
    assert reopened == (0o700, 0o600)


# -- 7. export -----------------------------------------------------------------------------------------------
def test_export_refuses_to_overwrite_and_reports_bad_paths(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    make_gallery(folder)
    target = tmp_path / "backup.jsonl"
    target.write_text("precious\n")
    assert_user_error(run_cli("gallery", "export", str(target), "--gallery", str(folder)), "already exists",
                      "--force", code=1)
    assert target.read_text() == "precious\n"
    forced = run_cli("gallery", "export", str(target), "--force", "--gallery", str(folder))
    assert forced.code == 0 and forced.json()["templates"] == 6, forced.stderr
    assert target.read_text().startswith('{"format": "facegate-gallery"')
    under_file = target / "nested.jsonl"
    assert_user_error(run_cli("gallery", "export", str(under_file), "--gallery", str(folder)),
                      "cannot write the export", "writable directory", code=1)
    assert_user_error(run_cli("gallery", "export", str(tmp_path / "no" / "dir.jsonl"), "--gallery", str(folder)),
                      "cannot write the export", code=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.jsonl", "g"]  # no temporary left behind


# -- 9. remove note ------------------------------------------------------------------------------------------
def test_remove_note_mentions_daemon_refresh_and_compact(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    make_gallery(folder)
    out = run_cli("gallery", "remove", "p1", "--gallery", str(folder))
    assert out.code == 0, out.stderr
    note = out.json()["note"]
    assert "gallery.refresh_s" in note and "compact" in note and "erase" in note
