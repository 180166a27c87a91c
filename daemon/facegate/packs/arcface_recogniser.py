"""ArcFace-class ONNX recognisers: 5-point similarity alignment to 112×112, then an embedding network.

"ArcFace-class" means any recogniser trained on faces aligned to the standard 112×112 ArcFace template
(``facegate.packs.align.ARCFACE_112_TEMPLATE``): InsightFace exports (``w600k_*``, ``(x − 127.5)/128``, RGB),
foamliu's MobileFaceNet (``/255`` then ImageNet mean/std, RGB; ../shared/models/README.md "MobileFaceNet"), and the
like. Everything model-specific comes from the pack manifest's ``recogniser`` block (``RecogniserSpec``):

* ``colour_order``: channel order the network takes (chips are BGR inside facegate and are flipped for ``rgb``);
* ``scale``, ``mean``, ``std``: ``x' = (x·scale − mean[c]) / std[c]`` per channel, in ``colour_order``; e.g.
  MobileFaceNet ``scale: 1/255``, ``mean: [0.485, 0.456, 0.406]``, ``std: [0.229, 0.224, 0.225]``
  (foamliu ``data_gen.py`` ``data_transforms['val']``); InsightFace ``scale: 1``, ``mean: 127.5``, ``std: 128``;
* ``fixed_batch``: the graph's batch dimension is fixed to 1, so chips run one at a time; otherwise one batch;
* ``embedding_size``, ``normalise`` (L2, needed for cosine when the graph ends in BatchNorm as MobileFaceNet does),
  ``metric``;
* ``flip``: embed the chip and its horizontal mirror and add the two embeddings (each L2-normalised first when
  ``normalise``; the sum normalised again) — the "flip test" of ArcFace-class evaluations (InsightFace's
  ``verification.py`` adds the embeddings of the image and its flip). Twice the network time; the built-in fused
  pack uses it (README, Accuracy: it lowers MobileFaceNet's all-pairs FNMR at FMR 1e-5 from 7.1 % to 6.5 % on LFW).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facegate.detections import Detections
from facegate.errors import ImageError, ModelError
from facegate.packs.align import arcface_align
from facegate.packs.manifest import RecogniserSpec
from facegate.packs.onnx_session import check_io, make_session

if TYPE_CHECKING:
    from facegate.packs.cache import PreparedPack

log = logging.getLogger(__name__)

#: Side of the aligned chip, px (the ArcFace template is defined for 112×112).
CHIP_SIZE = 112

_MODEL_NAME = "ArcFace-class recogniser"


class ArcFaceRecogniser:
    """An ArcFace-class recogniser run by ONNX Runtime.

    ``model``: path of the ONNX file or its bytes. ``spec``: the pack's ``RecogniserSpec`` (``kind: onnx``,
    ``alignment: arcface_112``). ``providers``/``threads`` go to ``make_session``.
    Raises ``ModelError`` naming the model, the file and the mismatch when the file cannot be loaded or its graph
    does not match the manifest: not one rank-4 float input and one rank-2 float output, a fixed input that is not
    3×112×112, a fixed output width other than ``embedding_size``, or a batch fixed to 1 while the manifest says
    ``fixed_batch: false``.
    """

    #: The manifest's ``recogniser.kind`` this class runs.
    kind = "onnx"

    def __init__(
        self,
        model: Path | str | bytes,
        spec: RecogniserSpec,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        where = "" if isinstance(model, bytes) else f" ({model})"
        self.name = f"{_MODEL_NAME}{where}"
        if spec.kind != "onnx" or spec.alignment != "arcface_112":
            raise ModelError(
                f"{self.name}: the manifest says kind {spec.kind!r} with alignment {spec.alignment!r}; this runner "
                "needs kind: onnx and alignment: arcface_112"
            )
        self.spec = spec
        self.session = make_session(model, _MODEL_NAME, providers, threads)
        check_io(self.session, self.name, inputs=[(None, 4, "tensor(float)")], outputs=[(None, 2, "tensor(float)")])
        arg = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        self.input_name = arg.name
        batch, channels, height, width = arg.shape
        for got, want, what in ((channels, 3, "channels"), (height, CHIP_SIZE, "height"), (width, CHIP_SIZE, "width")):
            if isinstance(got, int) and got != want:
                raise ModelError(
                    f"{self.name}: input {arg.name!r} has shape {arg.shape}: {what} {got}, expected {want} "
                    f"(N×3×{CHIP_SIZE}×{CHIP_SIZE} for an ArcFace-aligned chip)"
                )
        width_out = out.shape[1]
        if isinstance(width_out, int) and width_out != spec.embedding_size:
            raise ModelError(
                f"{self.name}: output {out.name!r} has shape {out.shape} ({width_out}-d) but the manifest says "
                f"embedding_size: {spec.embedding_size}"
            )
        if isinstance(batch, int) and batch == 1 and not spec.fixed_batch:
            raise ModelError(
                f"{self.name}: input {arg.name!r} has its batch fixed to 1 ({arg.shape}) but the manifest says "
                "fixed_batch: false; set fixed_batch: true"
            )
        self.one_at_a_time = spec.fixed_batch or isinstance(batch, int)
        order = (2, 1, 0) if spec.colour_order == "rgb" else (0, 1, 2)
        self._channels = list(order)  # BGR chip channel index for each network channel
        self._mult = (spec.scale / np.asarray(spec.std, np.float32)).reshape(3, 1, 1).astype(np.float32)
        self._add = (-np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)).reshape(3, 1, 1)
        self.providers = self.session.get_providers()
        trial = self._run(np.zeros((1, 3, CHIP_SIZE, CHIP_SIZE), np.float32))
        if trial.shape != (1, spec.embedding_size):
            raise ModelError(
                f"{self.name}: a trial run gave an output of shape {trial.shape}, expected (1, {spec.embedding_size})"
            )
        log.info(
            "recogniser=onnx alignment=arcface_112 dim=%d colour=%s batch=%s providers=%s",
            spec.embedding_size, spec.colour_order, "1" if self.one_at_a_time else "dynamic", ",".join(self.providers),
        )

    @classmethod
    def from_pack(
        cls, prepared: PreparedPack, providers: Sequence[str] | None = None, threads: int | None = None,
    ) -> ArcFaceRecogniser:
        """The recogniser of a prepared pack (``prepared.recogniser`` with the manifest's recogniser block)."""
        return cls.from_part(prepared, prepared.recogniser, prepared.manifest.recogniser, providers, threads)

    @classmethod
    def from_part(
        cls, prepared: PreparedPack, model: Path, spec: RecogniserSpec, providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> ArcFaceRecogniser:
        """One recogniser of a prepared pack: ``spec`` with its verified file ``model`` (a fused pack has several)."""
        return cls(model, spec, providers, threads)

    @property
    def metric(self) -> str:
        return self.spec.metric

    def align(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        """Aligned chips of every face in ``dets`` from the BGR uint8 ``image``: N×112×112×3 uint8 BGR.

        Similarity transform of the 5 landmarks onto ``ARCFACE_112_TEMPLATE`` (``facegate.packs.align``).
        """
        if not len(dets):
            return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
        return arcface_align(image, dets.landmarks, size=CHIP_SIZE)

    def preprocess(self, chips: np.ndarray) -> np.ndarray:
        """N×112×112×3 uint8 BGR chips → N×3×112×112 float32 blob in the manifest's colour order and scaling.

        Raises ``ImageError`` for chips of another shape or dtype.
        """
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or chips.dtype != np.uint8:
            raise ImageError(
                f"{_MODEL_NAME}: chips must be N×{CHIP_SIZE}×{CHIP_SIZE}×3 uint8 BGR, got {chips.dtype} {chips.shape}"
            )
        blob = chips.transpose(0, 3, 1, 2)[:, self._channels].astype(np.float32)
        blob *= self._mult
        blob += self._add
        return np.ascontiguousarray(blob)

    def _run(self, blob: np.ndarray) -> np.ndarray:
        if self.one_at_a_time:
            parts = [self.session.run(None, {self.input_name: blob[i : i + 1]})[0] for i in range(len(blob))]
            return np.concatenate(parts) if parts else np.zeros((0, self.spec.embedding_size), np.float32)
        return self.session.run(None, {self.input_name: blob})[0]

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """Embeddings of aligned BGR uint8 chips (N×112×112×3): N×D float32, L2-normalised when the manifest says
        ``normalise: true``; with ``flip: true`` the sum of the chip's and its mirror's embeddings (see the module
        docstring). A fixed-batch graph runs one chip at a time, a dynamic one in a single batch."""
        blob = self.preprocess(chips)
        if not len(blob):
            return np.zeros((0, self.spec.embedding_size), np.float32)
        emb = self._normalised(self._run(blob).astype(np.float32, copy=False))
        if self.spec.flip:  # the mirror image: reverse the width axis of the N×3×H×W blob
            emb = self._normalised(emb + self._normalised(self._run(np.ascontiguousarray(blob[..., ::-1]))))
        return emb

    def _normalised(self, emb: np.ndarray) -> np.ndarray:
        if not self.spec.normalise:
            return emb
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def embed(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        """``embed_chips(align(image, dets))``: N×D float32."""
        return self.embed_chips(self.align(image, dets))
