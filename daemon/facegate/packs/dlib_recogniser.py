"""The dlib recogniser (manifest ``recogniser.kind: dlib_resnet``): the built-in pack's path from a detector box to a
128-d descriptor (box → dlib 5-point landmarks → 150×150 chip → the dlib ResNet converted to ONNX).

ArcFace-class ONNX recognisers live in ``packs/arcface_recogniser.py``; ``packs/registry.py`` picks the class from the
manifest's kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facegate.detections import Detections
from facegate.errors import ModelError
from facegate.packs.manifest import RecogniserSpec
from facegate.packs.onnx_session import check_io, make_session

if TYPE_CHECKING:
    from facegate.packs.cache import PreparedPack


class DlibRecogniser:
    """dlib's face recognition pipeline evaluated by facegate's own code.

    1. the detector box is mapped to the box convention dlib's shape predictor was trained on
       (``packs/box_mapping.py``, fitted against dlib's HOG detector on LFW);
    2. dlib's 5-point shape predictor (``packs/dlib_landmarks.py``) gives 5 eye-corner/nose points;
    3. dlib's face chip (150×150, padding 0.25; ``packs/align.py``) is extracted bit-exactly as
       ``dlib.get_face_chip`` does;
    4. the dlib ResNet converted to ONNX (``packs/dlib_resnet.py``) gives a 128-d float32 descriptor
       (not normalised; compare by Euclidean distance, dlib's threshold 0.6).

    Source: dlib/tools/python/src/face_recognition.cpp ``compute_face_descriptor`` and
    ../shared/notes/dlib-models.md.

    ``model``: the converted ONNX file; ``spec``: the manifest's recogniser block; ``landmarks``: the shape
    predictor ``.dat``. Raises ``ModelError`` naming the file when the graph does not match the manifest.
    """

    #: The manifest's ``recogniser.kind`` this class runs.
    kind = "dlib_resnet"
    chip_size = 150

    def __init__(
        self,
        model: Path,
        spec: RecogniserSpec,
        landmarks: Path,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        from facegate.packs.dlib_landmarks import ShapePredictor5
        from facegate.packs.dlib_resnet import INPUT_NAME, OUTPUT_NAME

        self.spec = spec
        self.shape_predictor = ShapePredictor5.load(landmarks)
        self.session = make_session(model, f"recogniser {Path(model).name}", providers, threads)
        check_io(self.session, f"recogniser {model}", [(INPUT_NAME, 4, "tensor(uint8)")],
                 [(OUTPUT_NAME, 2, "tensor(float)")])
        self.input_name = INPUT_NAME
        self.providers = self.session.get_providers()
        width = self.session.get_outputs()[0].shape[1]
        if isinstance(width, int) and width != spec.embedding_size:
            raise ModelError(f"recogniser {model}: outputs {width}-d embeddings, manifest says {spec.embedding_size}")

    @classmethod
    def from_pack(
        cls, prepared: PreparedPack, providers: Sequence[str] | None = None, threads: int | None = None,
    ) -> DlibRecogniser:
        """The recogniser of a prepared pack. Raises ``ModelError`` when the pack has no landmarks model."""
        return cls.from_part(prepared, prepared.recogniser, prepared.manifest.recogniser, providers, threads)

    @classmethod
    def from_part(
        cls, prepared: PreparedPack, model: Path, spec: RecogniserSpec, providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> DlibRecogniser:
        """One recogniser of a prepared pack (``spec`` with its built file ``model``; a fused pack has several)
        using the pack's landmarks model. Raises ``ModelError`` when the pack has no landmarks model."""
        if prepared.landmarks is None:
            raise ModelError(f"pack {prepared.manifest.name!r}: the dlib_resnet recogniser needs a landmarks model")
        return cls(model, spec, prepared.landmarks, providers, threads)

    def landmarks(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        """dlib's 5 points for each face: N×5×2 float32 px (dlib order, §3.3 of the notes). ``image`` is BGR."""
        from facegate.packs.box_mapping import dlib_rect_from_detection

        if len(dets) == 0:
            return np.zeros((0, 5, 2), np.float32)
        return self.shape_predictor.predict(image, dlib_rect_from_detection(dets.boxes))

    def align(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        """Face chips for every face: N×150×150×3 uint8 **RGB** (what the network takes). ``image`` is BGR."""
        from facegate.packs.align import extract_dlib_chips

        if len(dets) == 0:
            return np.zeros((0, 150, 150, 3), np.uint8)
        points = self.landmarks(image, dets)
        chips_bgr = extract_dlib_chips(image, points, size=150, padding=0.25)
        return np.ascontiguousarray(chips_bgr[..., ::-1])

    def jittered_chips(self, image: np.ndarray, dets: Detections, count: int, seed: int | None = None) -> np.ndarray:
        """``count`` jittered chips per face (copy 0 = ``align``'s chip, copy 1 its mirror, then dlib
        ``jitter_image`` perturbations; ``packs/jitter.py``): N×count×150×150×3 uint8 **RGB**. ``image`` is BGR;
        ``seed`` defaults to ``jitter.JITTER_SEED``."""
        from facegate.packs.jitter import JITTER_SEED, jittered_dlib_chips

        if len(dets) == 0:
            return np.zeros((0, count, 150, 150, 3), np.uint8)
        points = self.landmarks(image, dets)
        chips_bgr = jittered_dlib_chips(image, points, count, JITTER_SEED if seed is None else seed)
        return np.ascontiguousarray(chips_bgr[..., ::-1])

    def embed_chips(self, chips: np.ndarray, max_batch: int = 64) -> np.ndarray:
        """Descriptors for N×150×150×3 uint8 RGB chips: N×128 float32 (raw, not normalised)."""
        if len(chips) == 0:
            return np.zeros((0, self.spec.embedding_size), np.float32)
        out = [self.session.run(None, {self.input_name: chips[i : i + max_batch]})[0]
               for i in range(0, len(chips), max_batch)]
        return np.concatenate(out).astype(np.float32, copy=False)
