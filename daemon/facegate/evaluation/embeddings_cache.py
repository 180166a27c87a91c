"""Embed evaluation images (one face per image) through a ``FacePipeline``, cached in SQLite.

Face choice: LFW images are 250×250 crops centred on the labelled person (Huang et al. 2007), so of the detected
faces the one whose box centre is nearest the image centre is used. When the detector finds no face the image is
embedded with a **fixed central box** (``FALLBACK_BOX_FRACTION`` of the width/height: (70, 70)–(180, 180) px on a
250×250 image) fed through the same alignment and embedding path (``FacePipeline.embed(image, dets)``; the dlib
path derives its landmarks from the box; other packs get the ArcFace 5-point template placed in that box). Such
images are counted and reported, never silently dropped — dropping them would flatter the accuracy.

Cache: one SQLite file (default ``<facegate cache>/eval/embeddings.sqlite``, see ``facegate.packs.cache
.cache_root``) with two tables. ``detections`` holds every detected face of an image and ``embeddings`` the chosen
face's embedding, each keyed by (fingerprint, image sha256). A fingerprint is ``<key>.<generation>``: the key hashes
what configures the stage (the detector's manifest entry; the whole manifest without its operating point plus the
face-choice rule plus the detection fingerprint), and the generation is **validated by recomputation**: before a
run reuses a generation, ``CANARIES`` of the run's images cached under it are detected/embedded again and must
agree (boxes within 1e-3 px, embeddings within 1e-4). Any change of model file, preprocessing, box mapping,
landmarks or alignment that changes outputs therefore starts a new generation, while refactors that change no
output keep the cache — which matters because detection at 640×640 is ~90 % of the time. Limit: a change that
alters only rare cases (the no-face fallback, multi-face images) may pass the canary check; use a new cache file
after such a change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facegate.detections import Detections
from facegate.errors import UsageError
from facegate.fileio import create_private_file
from facegate.imaging import decode_image, read_image_file

log = logging.getLogger(__name__)

#: Central fallback box as fractions of (width, height, width, height): (70, 70, 180, 180) px on LFW's 250×250
#: deep-funneled images, which covers the centred face (the funnelled faces' eyes lie near y ≈ 110 px).
FALLBACK_BOX_FRACTION = (0.28, 0.28, 0.72, 0.72)

#: ArcFace 5-point template in its 112×112 chip (px; insightface ``utils/face_align.py`` ``arcface_dst``),
#: used to place fallback landmarks inside the fallback box for packs that align on landmarks.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

#: Bumped whenever the face-choice or fallback rule changes (part of the cache fingerprint).
RULE_VERSION = "centre-nearest+central-box-v1"

METHOD_DETECTED = "detected"
METHOD_FALLBACK = "fallback_central_box"


def default_cache_path() -> Path:
    """``<facegate cache root>/eval/embeddings.sqlite`` ($FACEGATE_CACHE_DIR or $XDG_CACHE_HOME/facegate)."""
    from facegate.packs.cache import cache_root

    return cache_root() / "eval" / "embeddings.sqlite"


#: Cached images recomputed to validate a cache generation before reusing it.
CANARIES = 3


def _digest(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def detector_key(pipeline) -> str:
    """Key of the detection stage: sha256 (16 hex) of the detector's manifest entry."""
    return _digest(json.dumps(pipeline.manifest.detector.model_dump(mode="json"), sort_keys=True))


def pipeline_key(pipeline, detection_fingerprint: str, jitters: int = 0) -> str:
    """Key of the embedding stage: manifest (no operating point, calibration or fusion LLR maps: they change no
    embedding), face-choice rule and the detection fingerprint,
    plus the jitter count, seed and recipe when ``jitters`` ≥ 2 (plain keys are unchanged, so jittered and plain
    embeddings are never mixed)."""
    from facegate.packs.jitter import describe, effective_count

    # recogniser.min_face_px decides which faces vote in the daemon, not what they embed to; a fused pack's LLR maps
    # change its scores, not its embeddings
    manifest = pipeline.manifest.model_dump(mode="json", exclude={"operating_point": True, "manifest_path": True,
                                                                  "calibration": True,
                                                                  "recogniser": {"min_face_px"}})
    for part in manifest["recogniser"].get("parts", []):
        part.pop("llr", None)
    parts = [json.dumps(manifest, sort_keys=True), RULE_VERSION, detection_fingerprint]
    count = effective_count(jitters)
    if count:
        parts.append(describe(count))
    return _digest(*parts)


def fallback_detection(width: int, height: int) -> Detections:
    """One-face ``Detections`` for the central fallback box of a width×height image (score 0, template landmarks)."""
    fx1, fy1, fx2, fy2 = FALLBACK_BOX_FRACTION
    box = np.array([fx1 * width, fy1 * height, fx2 * width, fy2 * height], np.float32)
    scale = np.array([(box[2] - box[0]) / 112.0, (box[3] - box[1]) / 112.0], np.float32)
    landmarks = ARCFACE_TEMPLATE_112 * scale + box[:2]
    return Detections(box[None], np.zeros(1, np.float32), landmarks[None])


def pick_central(dets: Detections, width: int, height: int) -> int:
    """Index of the face whose box centre is nearest the image centre (−1 when there is none)."""
    if len(dets) == 0:
        return -1
    centres = (dets.boxes[:, :2] + dets.boxes[:, 2:]) / 2.0
    d = np.linalg.norm(centres - np.array([width / 2.0, height / 2.0]), axis=1)
    return int(np.argmin(d))


@dataclass
class EmbeddedSet:
    """Embeddings of a list of image files, row i for file i.

    ``embeddings`` N×D float32; ``methods`` N str (``detected`` or ``fallback_central_box``); ``faces`` N int
    (faces the detector found); ``boxes`` N×4 float32 (the box used, px).
    """

    embeddings: np.ndarray
    methods: np.ndarray
    faces: np.ndarray
    boxes: np.ndarray

    @property
    def fallback_count(self) -> int:
        return int(np.sum(self.methods == METHOD_FALLBACK))

    def summary(self) -> dict:
        """Counts for the JSON report: images, no-face images and the fallback used, multi-face images."""
        return {
            "images": int(len(self.methods)),
            "no_face_detected": self.fallback_count,
            "fallback": (
                f"no face detected: fixed central box {FALLBACK_BOX_FRACTION} x (width, height, width, height), "
                "i.e. (70,70)-(180,180) px on 250x250, fed to the same landmark/alignment/embedding path"
            ),
            "several_faces_detected": int(np.sum(self.faces > 1)),
        }


class EmbeddingCache:
    """SQLite store of one embedding per (fingerprint, image sha256). Safe to interrupt: each batch commits."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.writable = True
        try:
            # embeddings are biometric templates: the file 0600 (SQLite gives -journal/-wal files its mode) and
            # missing folders 0700, whatever the umask
            create_private_file(self.path)
            self.db = sqlite3.connect(self.path)
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (fingerprint TEXT NOT NULL, sha256 TEXT NOT NULL, "
                "method TEXT NOT NULL, faces INTEGER NOT NULL, box BLOB NOT NULL, embedding BLOB NOT NULL, "
                "PRIMARY KEY (fingerprint, sha256))"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS detections (fingerprint TEXT NOT NULL, sha256 TEXT NOT NULL, "
                "faces INTEGER NOT NULL, boxes BLOB NOT NULL, scores BLOB NOT NULL, landmarks BLOB NOT NULL, "
                "PRIMARY KEY (fingerprint, sha256))"
            )
            self.db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise UsageError(f"{self.path}: cannot open the embedding cache ({exc}); pass another --cache") from None

    def get(self, fingerprint: str, shas: Sequence[str]) -> dict[str, tuple[str, int, np.ndarray, np.ndarray]]:
        """Cached rows for the given hashes: sha256 → (method, faces, box 4 float32, embedding D float32)."""
        return {
            sha: (method, int(faces), np.frombuffer(box, np.float32), np.frombuffer(emb, np.float32))
            for sha, method, faces, box, emb in self._select("sha256, method, faces, box, embedding", "embeddings",
                                                             fingerprint, shas)
        }

    def _write(self, sql: str, rows: list[tuple]) -> None:
        """Insert and commit. A write the disk cannot take (full, I/O error) is logged once and turns the cache
        read-only: the evaluation goes on without caching, and its report is still produced."""
        if not self.writable:
            return
        try:
            self.db.executemany(sql, rows)
            self.db.commit()
        except sqlite3.OperationalError as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.rollback()
            self.writable = False
            log.warning("event=eval_cache_write_failed path=%s error=%r note=continuing_without_caching", self.path,
                        str(exc))

    def put(self, fingerprint: str, rows: Sequence[tuple[str, str, int, np.ndarray, np.ndarray]]) -> None:
        """Store (sha256, method, faces, box, embedding) rows and commit (``_write``)."""
        self._write(
            "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?)",
            [
                (fingerprint, sha, method, int(faces), np.asarray(box, np.float32).tobytes(),
                 np.asarray(emb, np.float32).tobytes())
                for sha, method, faces, box, emb in rows
            ],
        )

    def get_detections(self, fingerprint: str, shas: Sequence[str]) -> dict[str, Detections]:
        """Cached detector output for the given hashes: sha256 → Detections (every face found)."""
        return {
            sha: Detections(np.frombuffer(boxes, np.float32).reshape(n, 4),
                            np.frombuffer(scores, np.float32).reshape(n),
                            np.frombuffer(landmarks, np.float32).reshape(n, 5, 2))
            for sha, n, boxes, scores, landmarks in self._select("sha256, faces, boxes, scores, landmarks",
                                                                 "detections", fingerprint, shas)
        }

    def _select(self, columns: str, table: str, fingerprint: str, shas: Sequence[str]) -> Iterator[tuple]:
        """Rows of ``table`` for ``fingerprint`` and the given hashes (deduplicated), queried 500 at a time to stay
        under SQLite's bound-parameter limit."""
        unique = list(dict.fromkeys(shas))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            yield from self.db.execute(
                f"SELECT {columns} FROM {table} WHERE fingerprint = ? AND sha256 IN ({','.join('?' * len(chunk))})",
                [fingerprint, *chunk],
            )

    def put_detections(self, fingerprint: str, rows: Sequence[tuple[str, Detections]]) -> None:
        """Store (sha256, Detections) rows and commit (``_write``)."""
        self._write(
            "INSERT OR REPLACE INTO detections VALUES (?, ?, ?, ?, ?, ?)",
            [(fingerprint, sha, len(d), d.boxes.tobytes(), d.scores.tobytes(), d.landmarks.tobytes())
             for sha, d in rows],
        )

    def generations(self, table: str, key: str) -> list[str]:
        """Fingerprints ``key.N`` stored in ``table`` (``embeddings`` or ``detections``), newest first."""
        rows = self.db.execute(f"SELECT DISTINCT fingerprint FROM {table} WHERE fingerprint LIKE ?", (key + ".%",))
        found = [r[0] for r in rows if r[0].rsplit(".", 1)[-1].isdigit()]
        return sorted(found, key=lambda f: int(f.rsplit(".", 1)[-1]), reverse=True)

    def close(self) -> None:
        self.db.close()


def _read(path: Path) -> tuple[str, bytes]:
    """(sha256, bytes) of an image file, bounded (``imaging.read_image_file``; raises ``ImageError``)."""
    data = read_image_file(path)
    return hashlib.sha256(data).hexdigest(), data


def _resolve(cache: EmbeddingCache, table: str, key: str, shas: Sequence[str], agree) -> str:
    """The newest generation of ``key`` whose canaries ``agree``, or a new generation when none does."""
    existing = cache.generations(table, key)
    for fingerprint in existing:
        rows = (cache.get_detections if table == "detections" else cache.get)(fingerprint, shas)
        if not rows:
            continue
        canaries = dict(sorted(rows.items())[:CANARIES])
        if agree(canaries):
            log.info("event=eval_cache_reuse table=%s fingerprint=%s canaries=%d", table, fingerprint, len(canaries))
            return fingerprint
        log.info("event=eval_cache_stale table=%s fingerprint=%s", table, fingerprint)
    generation = 1 + max((int(f.rsplit(".", 1)[-1]) for f in existing), default=-1)
    return f"{key}.{generation}"


def _decode(sha: str, by_sha: dict, blobs: dict) -> np.ndarray:
    return decode_image(blobs[by_sha[sha]], str(by_sha[sha]))


def _detections_agree(pipeline, rows: dict[str, Detections], by_sha: dict, blobs: dict) -> bool:
    fresh = pipeline.detect([_decode(sha, by_sha, blobs) for sha in rows])
    for old, new in zip(rows.values(), fresh, strict=True):
        if len(old) != len(new) or not (np.allclose(old.boxes, new.boxes, atol=1e-3)
                                        and np.allclose(old.landmarks, new.landmarks, atol=1e-3)
                                        and np.allclose(old.scores, new.scores, atol=1e-4)):
            return False
    return True


def _embeddings_agree(pipeline, rows: dict, detected: dict[str, Detections], by_sha: dict, blobs: dict,
                      jitters: int = 0) -> bool:
    images, chosen, stored = [], [], []
    for sha, (method, _faces, _box, emb) in rows.items():
        image = _decode(sha, by_sha, blobs)
        h, w = image.shape[:2]
        dets = detected.get(sha)
        if dets is None:
            return False
        k = pick_central(dets, w, h)
        if (k >= 0) != (method == METHOD_DETECTED):
            return False
        images.append(image)
        chosen.append(dets[k] if k >= 0 else fallback_detection(w, h))
        stored.append(emb)
    fresh = pipeline.embed_many(images, chosen, jitters) if jitters else pipeline.embed_many(images, chosen)
    return all(np.allclose(new[0], old, atol=1e-4) for new, old in zip(fresh, stored, strict=True))


def embed_files(
    pipeline, paths: Sequence[Path], cache: EmbeddingCache | None = None, batch: int = 32, progress: bool = True,
    jitters: int = 0,
) -> EmbeddedSet:
    """Embed one face per image file (see module docstring for the face choice and the fallback).

    ``paths``: image files (any size; decoded to BGR). Images already in ``cache`` are not decoded again.
    Detection (``pipeline.detect``) and embedding of the chosen faces (``pipeline.embed_many``, the two halves of
    ``pipeline.analyse``) run ``batch`` images at a time. A tqdm bar goes to
    stderr when ``progress``. ``jitters`` ≥ 2 embeds each face as the mean of that many jittered copies
    (``FacePipeline.embed_many``; cached under its own key). Raises ``ImageError`` naming a missing or corrupt file.
    """
    from tqdm import tqdm

    paths = [Path(p) for p in paths]
    shas = []
    blobs: dict[Path, bytes] = {}
    for path in paths:
        sha, data = _read(path)
        shas.append(sha)
        blobs[path] = data
    by_sha = {sha: path for sha, path in zip(shas, paths, strict=True)}
    known: dict = {}
    detected: dict[str, Detections] = {}
    fingerprint = det_fingerprint = ""
    if cache is not None:
        det_fingerprint = _resolve(cache, "detections", detector_key(pipeline), shas,
                                   lambda rows: _detections_agree(pipeline, rows, by_sha, blobs))
        detected = cache.get_detections(det_fingerprint, shas)
        fingerprint = _resolve(cache, "embeddings", pipeline_key(pipeline, det_fingerprint, jitters), shas,
                               lambda rows: _embeddings_agree(pipeline, rows, detected, by_sha, blobs, jitters))
        known = cache.get(fingerprint, shas)
    todo = [i for i, sha in enumerate(shas) if sha not in known]
    todo = list({shas[i]: i for i in reversed(todo)}.values())[::-1]  # one per distinct image
    log.info("event=embed_files images=%d cached=%d to_embed=%d detections_cached=%d fingerprint=%s", len(paths),
             len(paths) - len(todo), len(todo), sum(shas[i] in detected for i in todo), fingerprint)
    bar = tqdm(total=len(todo), desc="embedding", unit="img", file=sys.stderr, disable=not progress or not todo)
    try:
        for start in range(0, len(todo), batch):
            idx = todo[start : start + batch]
            images = [decode_image(blobs[paths[i]], str(paths[i])) for i in idx]
            need = [j for j, i in enumerate(idx) if shas[i] not in detected]
            if need:
                found = pipeline.detect([images[j] for j in need])
                new_dets = [(shas[idx[j]], d) for j, d in zip(need, found, strict=True)]
                detected.update(new_dets)
                if cache is not None:
                    cache.put_detections(det_fingerprint, new_dets)
            chosen, methods, faces = [], [], []
            for i, image in zip(idx, images, strict=True):
                dets = detected[shas[i]]
                h, w = image.shape[:2]
                k = pick_central(dets, w, h)
                chosen.append(dets[k] if k >= 0 else fallback_detection(w, h))
                methods.append(METHOD_DETECTED if k >= 0 else METHOD_FALLBACK)
                faces.append(len(dets))
            embeddings = (pipeline.embed_many(images, chosen, jitters) if jitters
                          else pipeline.embed_many(images, chosen))
            new = [(shas[i], method, n, d.boxes[0], e[0])
                   for i, method, n, d, e in zip(idx, methods, faces, chosen, embeddings, strict=True)]
            for sha, method, n, box, emb in new:
                known[sha] = (method, n, np.asarray(box, np.float32), np.asarray(emb, np.float32))
            if cache is not None:
                cache.put(fingerprint, new)
            bar.update(len(idx))
    finally:
        bar.close()
    rows = [known[sha] for sha in shas]
    return EmbeddedSet(
        embeddings=np.stack([r[3] for r in rows]).astype(np.float32),
        methods=np.array([r[0] for r in rows]),
        faces=np.array([r[1] for r in rows], dtype=np.int64),
        boxes=np.stack([r[2] for r in rows]).astype(np.float32),
    )
