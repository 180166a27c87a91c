"""Maps a manifest's ``kind`` to the class that runs it, and builds a pack's detector, recogniser and liveness.

The tables are built from the ``kind`` each plug-in class declares, so adding a backend is: write the class (a
detector derives from ``packs/onnx_detector.OnnxDetector``), list it in ``DETECTOR_CLASSES`` or
``RECOGNISER_CLASSES``, and add its kind to the manifest schema (``packs/manifest.py``; tests/test_onnx_detector.py
checks that the schema and the registry list the same kinds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from facegate.errors import ModelError
from facegate.packs.arcface_recogniser import ArcFaceRecogniser
from facegate.packs.cache import PreparedPack
from facegate.packs.dlib_recogniser import DlibRecogniser
from facegate.packs.fused_recogniser import FusedRecogniser
from facegate.packs.liveness import LivenessFusion
from facegate.packs.manifest import FusedRecogniserSpec
from facegate.packs.onnx_detector import OnnxDetector
from facegate.packs.protocols import Detector, Liveness, Recogniser
from facegate.packs.retinaface import RetinaFaceDetector
from facegate.packs.scrfd import ScrfdDetector
from facegate.packs.yunet import YuNetDetector

_C = TypeVar("_C", bound=type)

#: Every detector plug-in; each takes (model path or bytes, DetectorSpec, providers, threads).
DETECTOR_CLASSES: tuple[type[OnnxDetector], ...] = (RetinaFaceDetector, YuNetDetector, ScrfdDetector)
#: Every recogniser; each has ``from_pack(prepared, providers, threads)``.
RECOGNISER_CLASSES: tuple[type[DlibRecogniser] | type[ArcFaceRecogniser], ...] = (DlibRecogniser, ArcFaceRecogniser)


def index_by_kind(classes: Sequence[_C], what: str) -> dict[str, _C]:
    """``{cls.kind: cls}``. Raises ``TypeError`` (a programming error, at import) for a class without a ``kind``
    string or two classes declaring the same kind."""
    table: dict[str, _C] = {}
    for cls in classes:
        kind = getattr(cls, "kind", None)
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"{what} class {cls.__name__} declares no kind")
        if kind in table:
            raise TypeError(f"{what} kind {kind!r} is declared by {table[kind].__name__} and {cls.__name__}")
        table[kind] = cls
    return table


#: detector kind → class (``retinaface``, ``scrfd``, ``yunet``).
DETECTORS: Mapping[str, type[OnnxDetector]] = index_by_kind(DETECTOR_CLASSES, "detector")
#: recogniser kind → class (``dlib_resnet``, ``onnx``).
RECOGNISERS: Mapping[str, type[DlibRecogniser] | type[ArcFaceRecogniser]] = index_by_kind(
    RECOGNISER_CLASSES, "recogniser"
)


def _lookup(table: Mapping[str, _C], kind: str, what: str) -> _C:
    cls = table.get(kind)
    if cls is None:
        raise ModelError(
            f"unknown {what} kind {kind!r}; known: {', '.join(sorted(table))}; fix the pack manifest's {what} kind"
        )
    return cls


def detector_class(kind: str) -> type[OnnxDetector]:
    """The detector class for a manifest ``detector.kind``. Raises ``ModelError`` listing the known kinds."""
    return _lookup(DETECTORS, kind, "detector")


def recogniser_class(kind: str) -> type[DlibRecogniser] | type[ArcFaceRecogniser]:
    """The recogniser class for a manifest ``recogniser.kind``. Raises ``ModelError`` listing the known kinds."""
    return _lookup(RECOGNISERS, kind, "recogniser")


def build_detector(
    prepared: PreparedPack, providers: Sequence[str] | None = None, threads: int | None = None,
) -> Detector:
    """The pack's detector, loaded and checked against its manifest. Raises ``ModelError``."""
    spec = prepared.manifest.detector
    return detector_class(spec.kind)(prepared.detector, spec, providers=providers, threads=threads)


def build_recogniser(
    prepared: PreparedPack, providers: Sequence[str] | None = None, threads: int | None = None,
) -> Recogniser:
    """The pack's recogniser, loaded and checked against its manifest: one model, or for ``kind: fused`` a
    ``FusedRecogniser`` of each part's model (``packs/fused_recogniser.py``). Raises ``ModelError``."""
    spec = prepared.manifest.recogniser
    if isinstance(spec, FusedRecogniserSpec):
        if len(prepared.recognisers) != len(spec.parts):
            raise ModelError(f"pack {prepared.manifest.name!r}: {len(prepared.recognisers)} recogniser files "
                             f"prepared for {len(spec.parts)} parts; run `facegate models prepare --force`")
        parts = [recogniser_class(part.kind).from_part(prepared, path, part, providers, threads)
                 for part, path in zip(spec.parts, prepared.recognisers, strict=True)]
        return FusedRecogniser(parts, spec)
    return recogniser_class(spec.kind).from_pack(prepared, providers, threads)


def build_liveness(
    prepared: PreparedPack, providers: Sequence[str] | None = None, threads: int | None = None,
) -> Liveness | None:
    """The fused liveness (PAD) models of the pack, or None when the pack has none. Raises ``ModelError``."""
    if prepared.manifest.liveness is None:
        return None
    return LivenessFusion(prepared.manifest.liveness, prepared.liveness, providers=providers, threads=threads)
