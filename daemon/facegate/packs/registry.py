"""Maps a manifest's ``kind`` strings to the classes that run them (the one place that knows every backend)."""

from __future__ import annotations

import importlib
from typing import Any

from facegate.errors import ModelError
from facegate.packs.cache import PreparedPack

#: detector kind → "module:Class"; each class takes (model path, DetectorSpec, providers, threads) and has
#: ``detect(images: list[BGR uint8]) -> list[Detections]``.
DETECTORS = {
    "retinaface": "facegate.packs.retinaface:RetinaFaceDetector",
    "yunet": "facegate.packs.yunet:YuNetDetector",
    "scrfd": "facegate.packs.scrfd:ScrfdDetector",
}

#: recogniser kind → "module:Class"; each has ``align(image, dets) -> chips`` and ``embed_chips(chips) -> N×D``.
RECOGNISERS = {
    "dlib_resnet": "facegate.packs.embedder:DlibRecogniser",
    "onnx": "facegate.packs.arcface:ArcFaceRecogniser",
}


def _load(table: dict[str, str], kind: str, what: str) -> Any:
    target = table.get(kind)
    if target is None:
        raise ModelError(f"unknown {what} kind {kind!r}; known: {', '.join(sorted(table))}")
    module_name, _, cls = target.partition(":")
    return getattr(importlib.import_module(module_name), cls)


def build_detector(prepared: PreparedPack, providers: list[str] | None = None, threads: int | None = None) -> Any:
    spec = prepared.manifest.detector
    return _load(DETECTORS, spec.kind, "detector")(prepared.detector, spec, providers=providers, threads=threads)


def build_recogniser(prepared: PreparedPack, providers: list[str] | None = None, threads: int | None = None) -> Any:
    spec = prepared.manifest.recogniser
    cls = _load(RECOGNISERS, spec.kind, "recogniser")
    if spec.kind == "dlib_resnet":
        if prepared.landmarks is None:
            raise ModelError(f"pack {prepared.manifest.name!r}: the dlib_resnet recogniser needs a landmarks model")
        return cls(prepared.recogniser, spec, prepared.landmarks, providers=providers, threads=threads)
    return cls(prepared.recogniser, spec, providers=providers, threads=threads)


def build_liveness(prepared: PreparedPack, providers: list[str] | None = None, threads: int | None = None) -> Any:
    """The fused liveness (PAD) models of the pack, or None when the pack has none."""
    if prepared.manifest.liveness is None:
        return None
    from facegate.packs.liveness import LivenessFusion

    return LivenessFusion(prepared.manifest.liveness, prepared.liveness, providers=providers, threads=threads)
