"""Bad input and hostile environments, injected for real: devices and FIFOs where files belong, files past their
size limits, headers that claim gigapixels, thread counts no machine has, a file system that fills up (a real
small tmpfs, when the tests run as root), and umask 000 (subprocesses started with it). Every case: the message
names the thing, the exit code is non-zero, there is no traceback, and nothing already stored is lost. The parsers
of untrusted input (import lines, config files, image headers) are fuzzed with Hypothesis: none may raise anything
but its documented error.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_util import Result, assert_user_error
from conftest import need_shared
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facegate.config_file import parse_config
from facegate.door.config import parse_door_config
from facegate.errors import GalleryError, ImageError
from facegate.fileio import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE
from facegate.gallery import Gallery, PackBinding, exchange
from facegate.gallery.exchange import parse_header, parse_identity_line
from facegate.imaging import MAX_IMAGE_PIXELS, read_image_header
from facegate.limits import usable_cpus

PACK = PackBinding("default", 128, "euclidean")
FUZZ = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def cli(*args: str, umask: int | None = None, timeout: float = 300, env: dict[str, str] | None = None) -> Result:
    """``python -m facegate.cli ARGS``; with ``umask`` the child starts with that umask (``Popen(umask=…)``)."""
    proc = subprocess.run([sys.executable, "-m", "facegate.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                          umask=-1 if umask is None else umask)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def make_gallery(folder: Path, n: int = 3) -> list[str]:
    rng = np.random.default_rng(1)
    with Gallery(folder) as g:
        for i in range(n):
            g.enrol(f"p{i}", rng.normal(0, 0.1, (2, 128)).astype(np.float32), PACK, groups=["staff"],
                    image_sha256=[f"{i:02d}{j:062d}" for j in range(2)])
    return [f"p{i}" for i in range(n)]


def names(folder: Path) -> list[str]:
    with Gallery(folder) as g:
        return sorted(i.name for i in g.identities())


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    return path


# -- 1. devices and FIFOs are refused before reading -------------------------------------------------------------
def test_gallery_import_refuses_dev_zero_and_a_fifo_without_reading(tmp_path, fifo):
    folder = tmp_path / "g"
    before = make_gallery(folder)
    for source, kind in (("/dev/zero", "character device"), (str(fifo), "FIFO")):
        t0 = time.monotonic()
        result = cli("gallery", "import", source, "--gallery", str(folder), timeout=60)
        assert_user_error(result, source, kind, "nothing was imported", code=1)
        assert time.monotonic() - t0 < 60  # a FIFO without a writer must not block the open
    assert names(folder) == before


@pytest.mark.parametrize("args", [
    ("config", "check", "{}"),
    ("door", "--config", "{}", "--check"),
    ("keys", "id", "{}"),
    ("detect", "{}"),
    ("gallery", "import", "{}", "--gallery", "GALLERY"),
    ("eval", "lfw", "--root", "ROOT", "--pairs", "{}"),
], ids=["config-check", "door-check", "keys-id", "detect", "gallery-import", "eval-pairs"])
def test_every_file_argument_refuses_a_fifo_and_a_device_by_name(tmp_path, fifo, args):
    root = str(need_shared("data", "lfw", "lfw-deepfunneled")) if "ROOT" in args else ""
    for source in (str(fifo), "/dev/zero"):
        argv = [a.replace("{}", source).replace("GALLERY", str(tmp_path / "g")).replace("ROOT", root) for a in args]
        result = cli(*argv, timeout=60)  # the FIFO has no writer: a plain open() would block until the timeout
        assert result.code != 0, result
        assert "Traceback" not in result.stderr, result.stderr
        assert source in result.stderr, result.stderr
        assert "not a regular file" in result.stderr or "does not exist or is not a regular file" in result.stderr, (
            result.stderr)


def test_config_settings_that_name_a_device_are_refused_by_key(tmp_path, fifo):
    video = need_shared("data", "videos", "stage_clip_640x360.mp4")
    manifest = tmp_path / "pack.yaml"
    os.mkfifo(manifest)
    for key, value in (("audit", {"path": "/dev/null"}), ("audit", {"path": str(fifo)}),
                       ("mqtt", {"host": "h", "username": "u",
                                                                    "password_file": "/dev/zero"}),
                       ("pack", str(manifest))):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"cameras": [{"id": "a", "file": str(video)}], key: value,
                                       "service": {"state_dir": str(tmp_path / "state")},
                                       "gallery": {"path": str(tmp_path / "g")}}))
        result = cli("config", "check", str(cfg), timeout=60)
        assert_user_error(result, code=2)
        errors = result.json()["errors"]
        assert errors and all(e["path"].startswith(key) for e in errors), errors


def test_files_opened_for_writing_refuse_a_fifo_in_the_way(tmp_path, fifo):
    """The audit log, the door's replay cache and the eval cache: a FIFO at their path would block the open (or
    SQLite's first read) for ever; each is refused by name instead."""
    from facegate.door.replay import ReplayCache
    from facegate.errors import ConfigError, UsageError
    from facegate.evaluation.embeddings_cache import EmbeddingCache
    from facegate.runtime.audit import AuditLog

    for build, error in ((AuditLog, ConfigError), (ReplayCache, ConfigError), (EmbeddingCache, UsageError)):
        with pytest.raises(error, match="FIFO") as info:
            build(fifo)
        assert str(fifo) in str(info.value)


def test_enroll_refuses_a_device_photo_and_keeps_going(tmp_path):
    photo = need_shared("data", "enroll_examples", "single", "lin-manuel-miranda.png")
    result = cli("enroll", "--gallery", str(tmp_path / "g"), "--name", "Lin", "/dev/zero", str(photo), timeout=300)
    assert_user_error(result, "1 of 2 photos refused", code=1)
    results = {r["file"]: r for r in result.json()["results"]}
    assert "character device" in results["/dev/zero"]["reason"] and results[str(photo)]["status"] == "enrolled"
    assert names(tmp_path / "g") == ["Lin"]


# -- 2. size limits ------------------------------------------------------------------------------------------------
def test_config_files_past_their_size_limit_are_refused_unread(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:
        handle.truncate(5 << 20)  # sparse: 5 MiB if read
    assert_user_error(cli("config", "check", str(big)), str(big), "1,048,576-byte limit", code=2)
    assert_user_error(cli("door", "--config", str(big), "--check"), str(big), "1,048,576-byte limit", code=2)


def test_import_line_and_total_limits(tmp_path, monkeypatch):
    folder = tmp_path / "g"
    before = make_gallery(folder)
    header = json.dumps({"format": "facegate-gallery", "version": 1, "pack": "default", "dim": 128,
                         "metric": "euclidean"}).encode() + b"\n"
    long_line = tmp_path / "long.jsonl"
    long_line.write_bytes(header + b"[" * (exchange.MAX_LINE_BYTES + 10))
    assert_user_error(cli("gallery", "import", str(long_line), "--gallery", str(folder)), str(long_line),
                      "line 2 is longer than the 16,777,216-byte limit", "nothing was imported", code=1)
    row = {"name": "q", "groups": [], "templates": [{"embedding": [0.1] * 128}]}
    many = tmp_path / "many.jsonl"
    many.write_bytes(header + (json.dumps(row).encode() + b"\n") * 50)
    monkeypatch.setattr(exchange, "MAX_IMPORT_BYTES", 4096)  # the limit's mechanism, at a size a test can write
    with Gallery(folder) as g, pytest.raises(GalleryError, match="more than the 4,096-byte limit"):
        g.import_file(many)
    assert names(folder) == before


def test_a_png_claiming_60_megapixels_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png(10_000, 6_000))  # a few dozen bytes: no pixel data, only the header is read
    result = cli("detect", str(path), timeout=60)
    assert_user_error(result, str(path), "10000×6000 px", f"{MAX_IMAGE_PIXELS:,} px limit", code=1)


# -- 3. thread counts, one validator everywhere ----------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["detect", "x.jpg"], ["embed", "x.jpg"], ["liveness", "x.jpg"], ["identify", "x.jpg"],
    ["enroll", "--name", "a", "x.jpg"], ["eval", "openset", "--root", "r"],
], ids=lambda c: c[0] if c[0] != "eval" else "eval")
@pytest.mark.parametrize("threads", ["100000", "0", "-1", "two", str(usable_cpus() + 1)])
def test_thread_counts_are_bounded_in_every_command(command, threads):
    result = cli(*command, "--threads", threads, timeout=60)
    assert_user_error(result, "--threads", code=2)
    assert threads in result.stderr


def test_config_thread_count_is_bounded_by_this_machine(tmp_path):
    video = need_shared("data", "videos", "stage_clip_640x360.mp4")
    for threads, needle in ((100_000, "less than or equal to 256"), (usable_cpus() + 1, "CPU(s) this process")):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"cameras": [{"id": "a", "file": str(video)}],
                                       "inference": {"threads": threads}}))
        result = cli("config", "check", str(cfg), timeout=60)
        assert_user_error(result, "inference.threads", needle, code=2)


@pytest.mark.parametrize("command", [["enroll", "--name", "a", "x.jpg"], ["embed", "x.jpg"],
                                     ["eval", "openset", "--root", "r"]], ids=["enroll", "embed", "eval"])
def test_jitter_counts_are_bounded(command):
    for jitters in ("101", "-1"):
        assert_user_error(cli(*command, "--jitters", jitters, timeout=60), "--jitters", jitters, code=2)


# -- 4. parsers of untrusted input never raise ----------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                                  max_size=5), max_leaves=30)
RECORD = st.fixed_dictionaries({
    "name": st.one_of(st.text(max_size=30), JSON),
    "groups": st.one_of(st.lists(st.text(max_size=10), max_size=3), JSON),
    "templates": st.one_of(st.lists(st.fixed_dictionaries({
        "embedding": st.one_of(st.lists(st.floats() | st.integers(), min_size=128, max_size=128), JSON),
        "image_sha256": st.one_of(st.none(), st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), JSON),
        "quality": JSON}), max_size=3), JSON)})


@FUZZ
@given(st.one_of(st.binary(max_size=2000), JSON.map(lambda v: json.dumps(v).encode()),
                 RECORD.map(lambda v: json.dumps(v).encode()),
                 st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)))
def test_import_line_parser_never_raises_anything_but_a_gallery_error(line):
    try:
        record = parse_identity_line("f.jsonl", 2, line, PACK)
    except GalleryError as exc:
        assert "f.jsonl:2" in str(exc)
        return
    assert record["embeddings"].shape[1:] == (128,) and np.isfinite(record["embeddings"]).all()
    assert isinstance(record["name"], str) and record["name"]


@FUZZ
@given(st.one_of(st.binary(max_size=500), JSON.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"format": st.just("facegate-gallery"), "pack": JSON, "dim": JSON,
                                        "metric": JSON}).map(lambda v: json.dumps(v).encode())))
def test_import_header_parser_never_raises_anything_but_a_gallery_error(line):
    try:
        pack = parse_header("f.jsonl", line)
    except GalleryError:
        return
    assert pack is None or (0 < pack.dim <= exchange.MAX_DIM and pack.metric in ("euclidean", "cosine"))


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=15),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["cameras", "doors", "mqtt", "decision", "id", "file", "port", "k", "n", "url", "door",
                         "schedule", "windows", "start", "end", "timezone", "host", "keys", "output", "gpio",
                         "line", "pulse_s", "replay_cache", "path"]) | st.text(max_size=8), inner, max_size=5),
    max_leaves=25)


@FUZZ
@given(st.one_of(st.text(max_size=400), YAML_VALUES.map(lambda v: yaml.safe_dump(v, allow_unicode=True))))
def test_config_parsers_never_raise(text):
    config, issues = parse_config(text)
    assert (config is None) == bool(issues)
    assert all(isinstance(i.message, str) for i in issues)
    door, problems = parse_door_config(text)
    assert (door is None) == bool(problems)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` px, followed by one tiny IDAT: the header is well formed,
    the pixels are not there (only a decoder would notice)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 4))
            + _chunk(b"IEND", b""))


def _jpeg(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


@FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
    st.binary(max_size=300).map(lambda b: b"\xff\xd8\xff" + b),
    st.binary(max_size=300).map(lambda b: b"RIFF" + b[:4] + b"WEBPVP8 " + b[4:]),
    st.binary(max_size=300).map(lambda b: b"II*\x00" + b),
    st.binary(max_size=300).map(lambda b: b"BM" + b),
    st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)).map(lambda wh: _png(*wh)),
    st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(lambda wh: _jpeg(*wh)),
))
def test_image_header_reader_never_raises_anything_but_an_image_error(data):
    try:
        header = read_image_header(data, "x.img")
    except ImageError as exc:
        assert "x.img" in str(exc)
        return
    assert 0 < header.width * header.height <= MAX_IMAGE_PIXELS


@pytest.mark.parametrize("width,height", [(7072, 7072), (7071, 7071), (1, 50_000_000), (0, 10), (65535, 65535)])
def test_image_header_pixel_limit_is_exact(width, height):
    for data in (_png(width, height), *([_jpeg(width, height)] if max(width, height) < 65536 else [])):
        if 0 < width * height <= MAX_IMAGE_PIXELS:
            header = read_image_header(data, "x")
            assert (header.width, header.height) == (width, height)
        else:
            with pytest.raises(ImageError, match="px limit|no pixels|cannot decode"):
                read_image_header(data, "x")


# -- 5. a full disk ends every command with its report and a clear error --------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    """A real small tmpfs (mounted for the test, unmounted after); ``remount(size)`` grows it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (CI runs the tests as root)")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs (container without CAP_SYS_ADMIN)")

    class Mount:
        path = mount

        @staticmethod
        def remount(size: str) -> None:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

        @staticmethod
        def fill() -> None:
            """Write zeros until the file system refuses (unbuffered: nothing left to flush at close)."""
            fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(fd)

    try:
        yield Mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_enroll_from_dir_on_a_disk_that_fills_prints_its_report_and_loses_nothing(tmpfs):
    train = need_shared("data", "enroll_examples", "knn_examples", "train")
    total = sum(1 for p in train.rglob("*") if p.is_file())
    gallery = tmpfs.path / "g"
    result = cli("enroll", "--gallery", str(gallery), "--from-dir", str(train))
    assert_user_error(result, "disk is full", "the JSON report on stdout lists what was committed", code=1)
    report = result.json()
    assert "disk is full" in report["error"] and report["gallery"] == str(gallery)
    committed = sorted({r["identity"] for r in report["results"] if r["status"] == "enrolled"})
    assert 1 <= report["enrolled"] < total, report
    tmpfs.remount("50m")  # space comes back: everything reported as committed is there, and the run can finish
    assert names(gallery) == committed
    again = cli("enroll", "--gallery", str(gallery), "--from-dir", str(train))
    assert again.code == 0, again.stderr
    assert again.json()["skipped"] == report["enrolled"]
    assert again.json()["enrolled"] + report["enrolled"] == total


def test_gallery_import_and_compact_on_a_full_disk_change_nothing(tmpfs, tmp_path):
    gallery = tmpfs.path / "g"
    before = make_gallery(gallery, n=2)
    export = tmp_path / "export.jsonl"
    rows = [{"name": f"new{i}", "groups": [], "templates": [{"embedding": [float(i + 1)] * 128}]} for i in range(200)]
    export.write_text(json.dumps({"format": "facegate-gallery", "version": 1, "pack": "default", "dim": 128,
                                  "metric": "euclidean"}) + "\n" + "".join(json.dumps(r) + "\n" for r in rows))
    tmpfs.fill()
    assert_user_error(cli("gallery", "import", str(export), "--gallery", str(gallery)), "disk is full", code=1)
    assert_user_error(cli("gallery", "compact", "--gallery", str(gallery)), str(gallery), code=1)
    (tmpfs.path / "filler").unlink()
    assert names(gallery) == before


def test_keys_generate_on_a_full_disk_leaves_no_half_pair(tmpfs):
    tmpfs.fill()
    result = cli("keys", "generate", "--out", str(tmpfs.path / "keys"))
    assert_user_error(result, "cannot write the key pair", str(tmpfs.path / "keys"), code=2)
    assert not (tmpfs.path / "keys" / "signing.key").exists()  # no lone private key for the next run to trip on


def test_models_prepare_on_a_full_disk_is_a_clear_error(tmpfs):
    result = cli("models", "prepare", "--pack", "default", env={"FACEGATE_CACHE_DIR": str(tmpfs.path / "cache")})
    assert_user_error(result, "no space left on the device", code=1)


def test_the_eval_cache_on_a_full_disk_goes_read_only_and_the_evaluation_goes_on(tmpfs, caplog):
    from facegate.evaluation.embeddings_cache import EmbeddingCache

    cache = EmbeddingCache(tmpfs.path / "cache.sqlite")
    row = ("a" * 64, "detected", 1, np.zeros(4, np.float32), np.ones(128, np.float32))
    cache.put("fp", [row])
    tmpfs.fill()
    with caplog.at_level(logging.WARNING):
        cache.put("fp", [(f"{i:064d}", "detected", 1, np.zeros(4, np.float32), np.ones(128, np.float32) * i)
                         for i in range(2000)])
    assert not cache.writable and "eval_cache_write_failed" in caplog.text
    assert list(cache.get("fp", ["a" * 64])) == ["a" * 64]  # what was stored before stays readable
    cache.close()


# -- 6. private files whatever the umask ----------------------------------------------------------------------------
def test_keys_generate_under_umask_000(tmp_path):
    out = tmp_path / "new" / "keys"
    result = cli("keys", "generate", "--out", str(out), "--name", "k", umask=0)
    assert result.code == 0, result.stderr
    assert (mode(tmp_path / "new"), mode(out)) == (PRIVATE_DIR_MODE, PRIVATE_DIR_MODE)
    assert (mode(out / "k.key"), mode(out / "k.pub")) == (PRIVATE_FILE_MODE, 0o644)


@pytest.mark.parametrize("pack", ["default", "dlib"])  # the fused pack keeps no index file; the dlib pack's hnswlib
def test_enroll_gallery_under_umask_000(tmp_path, pack):
    photo = need_shared("data", "enroll_examples", "single", "lin-manuel-miranda.png")
    gallery = tmp_path / "new" / "g"
    result = cli("enroll", "--pack", pack, "--gallery", str(gallery), "--name", "Lin", str(photo), umask=0)
    assert result.code == 0, result.stderr
    assert (mode(tmp_path / "new"), mode(gallery)) == (PRIVATE_DIR_MODE, PRIVATE_DIR_MODE)
    files = [p for p in gallery.iterdir() if p.is_file()]
    assert (gallery / "gallery.db") in files and any(p.name.endswith(".hnsw") for p in files) == (pack == "dlib")
    assert {p.name: mode(p) for p in files} == {p.name: PRIVATE_FILE_MODE for p in files}


def test_run_state_folder_key_and_audit_under_umask_000(tmp_path):
    video = need_shared("data", "videos", "stage_clip_640x360.mp4")
    state = tmp_path / "new" / "state"
    cfg = tmp_path / "facegate.yaml"
    cfg.write_text(yaml.safe_dump({
        "cameras": [{"id": "stage", "file": str(video), "start_s": 2.6, "stop_s": 3.6}],
        "gallery": {"path": str(tmp_path / "gallery")},
        "service": {"state_dir": str(state), "stdout_events": False}}))
    result = cli("run", "--config", str(cfg), umask=0, timeout=300)
    assert result.code == 0, result.stderr
    assert (mode(tmp_path / "new"), mode(state)) == (PRIVATE_DIR_MODE, PRIVATE_DIR_MODE)
    assert mode(state / "event-signing.key") == PRIVATE_FILE_MODE and mode(state / "event-signing.pub") == 0o644
    assert mode(state / "audit.jsonl") == PRIVATE_FILE_MODE
    assert (state / "audit.jsonl").read_text().count("\n") >= 1  # decisions were audited


def test_eval_embedding_cache_under_umask_000(tmp_path):
    root = need_shared("data", "lfw", "lfw-deepfunneled")
    cache = tmp_path / "new" / "cache.sqlite"
    result = cli("eval", "openset", "--root", str(root), "--max-identities", "6", "--cache", str(cache),
                 "--out", str(tmp_path / "out"), "--no-plot", "--no-progress", umask=0)
    assert result.code == 0, result.stderr
    assert mode(cache.parent) == PRIVATE_DIR_MODE
    assert {p.name: mode(p) for p in cache.parent.iterdir()} == {p.name: PRIVATE_FILE_MODE
                                                                 for p in cache.parent.iterdir()}


def test_door_agent_replay_cache_under_umask_000(tmp_path, mosquitto_broker):
    from facegate.signing import generate_key_pair

    pair = generate_key_pair(tmp_path / "keys", "daemon")
    replay = tmp_path / "new" / "state" / "replay.db"
    config = tmp_path / "door.yaml"
    config.write_text(yaml.safe_dump({
        "door": "front", "mqtt": {"host": mosquitto_broker.host, "port": mosquitto_broker.port,
                                  "client_id": f"door-{uuid.uuid4().hex[:8]}"},
        "keys": {"public_keys": [str(pair.public)]}, "replay_cache": {"path": str(replay)},
        "output": {"command": {"activate": ["true"], "release": ["true"]}}}))
    log = tmp_path / "door.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "facegate.cli", "door", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=err, umask=0)
    try:
        deadline = time.monotonic() + 30
        while "event=door_agent_ready" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "event=door_agent_ready" in log.read_text(), log.read_text()
        assert (mode(tmp_path / "new"), mode(replay.parent)) == (PRIVATE_DIR_MODE, PRIVATE_DIR_MODE)
        files = [p for p in replay.parent.iterdir() if p.name.startswith("replay.db")]
        assert {p.name: mode(p) for p in files} == {p.name: PRIVATE_FILE_MODE for p in files}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
