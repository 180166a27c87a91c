"""The model cache: ``facegate models prepare`` verifies every source file by sha256, builds converted files (the
dlib ResNet → ONNX) and records what it built in ``prepared.json`` beside them.

Cache location (first that applies): ``$FACEGATE_CACHE_DIR``; ``$STATE_DIRECTORY/cache`` (set by systemd for the
service, see systemd/facegate.service); ``$XDG_CACHE_HOME/facegate``; ``~/.cache/facegate``. Each pack lives in
``<cache>/packs/<name>/``. Writes are atomic (temporary file, fsync, rename) so an interrupted prepare never leaves a
half-written model that a later run would trust: a later run re-verifies every sha256 before use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from facegate import __version__
from facegate.errors import ChecksumError, ModelError
from facegate.fileio import read_limited, sha256_file, write_atomic
from facegate.packs.manifest import (
    FusedRecogniserSpec,
    ModelFile,
    PackManifest,
    RecogniserSpec,
    list_manifests,
    read_source_bytes,
    source_path,
)

log = logging.getLogger(__name__)

STATE_FILE = "prepared.json"


def cache_root() -> Path:
    """The cache folder (see module docstring); not created here."""
    if env := os.environ.get("FACEGATE_CACHE_DIR"):
        return Path(env).expanduser()
    if state := os.environ.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0]) / "cache"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "facegate"


def pack_dir(manifest: PackManifest) -> Path:
    """The pack's cache folder: ``packs/<name>`` for the manifest that ``--pack <name>`` resolves to, and
    ``packs/<name>@<8 hex of its path>`` for any other file with the same ``name`` (e.g. an integrator's edited copy
    loaded by path), so that two different manifests never overwrite each other's prepared files."""
    folder = cache_root() / "packs"
    registered = list_manifests().get(manifest.name)
    own = Path(manifest.manifest_path).resolve() if manifest.manifest_path else None
    if own is None or (registered is not None and registered.resolve() == own):
        return folder / manifest.name
    return folder / f"{manifest.name}@{sha256_bytes(str(own).encode())[:8]}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class PreparedPack:
    """Verified, ready-to-load files of one pack (all paths exist and match their recorded sha256)."""

    manifest: PackManifest
    detector: Path
    recogniser: Path
    landmarks: Path | None = None
    liveness: list[Path] = field(default_factory=list)
    directory: Path | None = None
    #: Every recogniser file in manifest order: the one recogniser, or the parts of a fused pack.
    recognisers: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.recognisers:
            self.recognisers = [self.recogniser]


def _manifest_digest(manifest: PackManifest) -> str:
    """Digest of what decides the built files (not the operating point, calibration, the minimum face size for a
    vote or descriptions: changing a threshold must not force every machine to rebuild its models)."""
    return sha256_bytes(manifest.model_dump_json(exclude={
        "manifest_path": True, "operating_point": True, "calibration": True, "description": True,
        "recogniser": {"min_face_px"},
    }).encode())


def _verified_source(model: ModelFile, manifest: PackManifest, role: str) -> tuple[bytes, Path | None]:
    """Bytes of a source after checking its sha256; raises ChecksumError naming the file."""
    what = f"pack {manifest.name!r} {role}"
    data = read_source_bytes(model.source, manifest.manifest_path, what)
    got = sha256_bytes(data)
    if got != model.sha256:
        where = source_path(model.source, manifest.manifest_path) or model.source.describe()
        raise ChecksumError(
            f"{what}: {where} has sha256 {got}, but the manifest {manifest.manifest_path} expects {model.sha256}; "
            "the file is corrupt or a different version: reinstall it or fix the manifest"
        )
    return data, source_path(model.source, manifest.manifest_path)


def _materialise(model: ModelFile, manifest: PackManifest, role: str, target: Path) -> Path:
    """Return a verified on-disk path for a source: the source file itself, or a copy in the cache for bytes."""
    data, path = _verified_source(model, manifest, role)
    if path is not None:
        return path
    if not target.exists() or sha256_file(target) != model.sha256:
        write_atomic(target, data)
    return target


def prepare_pack(manifest: PackManifest, force: bool = False) -> PreparedPack:
    """Verify and build every file of a pack into the cache; returns the verified paths.

    Idempotent: files already built and matching their recorded sha256 are kept unless ``force``.
    Raises ``ChecksumError`` / ``ModelError`` naming the file when a source is missing or corrupt.
    """
    folder = pack_dir(manifest)
    folder.mkdir(parents=True, exist_ok=True)
    detector = _materialise(manifest.detector, manifest, "detector", folder / "detector.onnx")
    landmarks = None
    if manifest.landmarks is not None:
        landmarks = _materialise(manifest.landmarks, manifest, "landmarks", folder / "landmarks.dat")
    spec = manifest.recogniser
    if isinstance(spec, FusedRecogniserSpec):
        built = [_prepare_recogniser(part, manifest, folder, f"recogniser{i}", f"recogniser part {i}", force)
                 for i, part in enumerate(spec.parts)]
    else:
        built = [_prepare_recogniser(spec, manifest, folder, "recogniser", "recogniser", force)]
    parts = [path for path, _ in built]
    liveness: list[Path] = []
    if manifest.liveness is not None:
        for i, model in enumerate(manifest.liveness.models):
            liveness.append(_materialise(model, manifest, f"liveness model {i}", folder / f"liveness{i}.onnx"))
    record = {
        "pack": manifest.name,
        "manifest": manifest.manifest_path,
        "manifest_digest": _manifest_digest(manifest),
        "facegate_version": __version__,
        "files": {
            "detector": {"path": str(detector), "sha256": manifest.detector.sha256},
            "landmarks": {"path": str(landmarks), "sha256": manifest.landmarks.sha256} if landmarks else None,
            "recogniser": {"path": str(parts[0]), **built[0][1]},
            "recogniser_parts": [{"path": str(path), **rec} for path, rec in built],
            "liveness": [{"path": str(p), "sha256": m.sha256} for p, m in
                         zip(liveness, manifest.liveness.models if manifest.liveness else [], strict=True)],
        },
    }
    write_atomic(folder / STATE_FILE, json.dumps(record, indent=2).encode())
    return PreparedPack(manifest, detector, parts[0], landmarks, liveness, folder, parts)


def _prepare_recogniser(
    spec: RecogniserSpec, manifest: PackManifest, folder: Path, stem: str, role: str, force: bool,
) -> tuple[Path, dict[str, str]]:
    """One recogniser's verified ONNX file (the dlib ResNet converted into ``<stem>.onnx`` once, other files used
    where they are) and its state record ``{sha256[, source_sha256]}``."""
    if spec.kind != "dlib_resnet":
        return _materialise(spec, manifest, role, folder / f"{stem}.onnx"), {"sha256": spec.sha256}
    from facegate.packs.dlib_resnet import convert_dlib_resnet

    _, dat_path = _verified_source(spec, manifest, role)
    if dat_path is None:
        dat_path = _materialise(spec, manifest, role, folder / f"{stem}.dat")
    target = folder / f"{stem}.onnx"
    state = _read_state(folder)
    recorded = _recorded(state, str(target))
    if (
        force
        or not target.exists()
        or recorded.get("source_sha256") != spec.sha256
        or recorded.get("sha256") != sha256_file(target)
    ):
        log.warning("building %s from %s (one-off, a few seconds)", target, dat_path)
        digest = convert_dlib_resnet(dat_path, target)
    else:
        digest = recorded["sha256"]
    return target, {"sha256": digest, "source_sha256": spec.sha256}


def _recorded(state: dict | None, path: str) -> dict:
    """The state record of the built recogniser file ``path`` (``recogniser_parts``, or the older single
    ``recogniser`` entry), {} when there is none."""
    files = (state or {}).get("files", {})
    for record in [*files.get("recogniser_parts", []), files.get("recogniser") or {}]:
        if record.get("path") == path:
            return record
    return {}


def _read_state(folder: Path) -> dict | None:
    try:
        return json.loads(read_limited(folder / STATE_FILE, 1 << 20, "a cache state file").decode("utf-8"))
    except (OSError, ValueError):
        return None


def pack_state(manifest: PackManifest) -> str:
    """'prepared', 'not prepared' or 'stale' (manifest changed or a built file no longer matches)."""
    state = _read_state(pack_dir(manifest))
    if state is None:
        return "not prepared"
    if state.get("manifest_digest") != _manifest_digest(manifest):
        return "stale"
    files = state.get("files", {})
    for built in files.get("recogniser_parts") or [files.get("recogniser") or {}]:
        path = Path(built.get("path", ""))
        if not path.is_file() or sha256_file(path) != built.get("sha256"):
            return "stale"
    return "prepared"


def ensure_prepared(manifest: PackManifest) -> PreparedPack:
    """Prepare on first use (with a clear message on stderr via logging), else re-verify and return the paths.

    Every source is re-hashed on each call (tens of ms), so a file corrupted after prepare is caught before use.
    A converted file that no longer matches its recorded sha256 is rebuilt, with a warning naming it.
    """
    state = pack_state(manifest)
    if state != "prepared":
        log.warning("model pack %r is %s: preparing it in %s (first use; run `facegate models prepare` to do "
                    "this ahead of time)", manifest.name, state, pack_dir(manifest))
    try:
        return prepare_pack(manifest)
    except OSError as exc:
        raise ModelError(f"cannot write the model cache {pack_dir(manifest)}: {exc}; set FACEGATE_CACHE_DIR "
                         "to a writable folder") from None
