"""``facegate detect IMAGE...`` and ``facegate embed IMAGE...``: JSON per face on stdout."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from facegate.commands import jitter_count, print_json, thread_count


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG/… files")
    parser.add_argument("--pack", default="default", help="model pack name or manifest path (default: default)")
    parser.add_argument("--annotate", metavar="OUT.png",
                        help="draw boxes and landmarks; with several images, OUT gets the image's stem appended")
    parser.add_argument("--threads", type=thread_count, default=None, help="ONNX Runtime intra-op threads (1 … CPUs)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``facegate detect`` and ``facegate embed``."""
    detect = sub.add_parser("detect", help="find faces: box, 5 landmarks, score as JSON",
                            epilog="Example: facegate detect photo.jpg --annotate faces.png")
    _common(detect)
    detect.set_defaults(handler=lambda a: _run(a, embed=False))
    embed = sub.add_parser("embed", help="find faces and print their embeddings (templates) as JSON",
                           epilog="Example: facegate embed photo.jpg --pack default")
    _common(embed)
    embed.add_argument("--jitters", type=jitter_count, default=0,
                       help="average N perturbed copies of each face (dlib jitter_image; N× slower; 0 = off)")
    embed.set_defaults(handler=lambda a: _run(a, embed=True))


def annotate(image: np.ndarray, dets, path: Path) -> None:
    """Write ``image`` (BGR) with boxes, scores and landmarks drawn to ``path``; raises ImageError if unwritable."""
    import cv2

    from facegate.errors import ImageError

    canvas = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 500))
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255)]
    for box, score, points in zip(dets.boxes, dets.scores, dets.landmarks, strict=True):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 200, 0), thickness)
        cv2.putText(canvas, f"{score:.2f}", (x1, max(0, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness,
                    (0, 200, 0), thickness)
        for (x, y), colour in zip(points, colours, strict=True):
            cv2.circle(canvas, (int(round(x)), int(round(y))), 2 * thickness, colour, -1)
    try:
        ok = cv2.imwrite(str(path), canvas)
    except cv2.error:
        ok = False
    if not ok:
        raise ImageError(f"{path}: cannot write the annotated image (check the folder exists and the extension "
                         "is .png or .jpg)")


def _run(args: argparse.Namespace, embed: bool) -> int:
    from facegate.imaging import load_image
    from facegate.pipeline import FacePipeline

    images = [load_image(p) for p in args.images]  # fail on a bad file before loading models
    pipeline = FacePipeline.load(args.pack, threads=args.threads, with_liveness=False)
    results = pipeline.analyse(images, jitters=args.jitters) if embed else pipeline.detect(images)
    out = []
    for path, image, dets in zip(args.images, images, results, strict=True):
        faces = dets.to_json()
        if embed:
            for face, vector in zip(faces, dets.data["embeddings"], strict=True):
                face["embedding"] = [round(float(v), 7) for v in vector]
        out.append({"image": str(path), "width": image.shape[1], "height": image.shape[0],
                    "pack": pipeline.manifest.name, "faces": faces})
        if args.annotate:
            target = Path(args.annotate)
            if len(args.images) > 1:
                target = target.with_name(f"{target.stem}_{Path(path).stem}{target.suffix or '.png'}")
            annotate(image, dets, target)
    if embed:
        for item in out:
            item["metric"] = pipeline.metric
    print_json(out)
    return 0
