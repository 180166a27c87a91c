"""``facegate liveness IMAGE...``: presentation-attack detection (PAD) per face, as JSON on stdout."""

from __future__ import annotations

import argparse

from facegate.commands import thread_count

#: Pack used when ``--pack`` is not given: the built-in pack's detector (RetinaFace) with the MiniFASNet pair.
DEFAULT_LIVENESS_PACK = "retinaface-mobilefacenet"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``facegate liveness``."""
    parser = sub.add_parser(
        "liveness",
        help="presentation-attack detection: live probability and decision per face, as JSON",
        description="Detect faces and score each with the pack's liveness (PAD) models. A face is 'live' when its "
        "fused live probability is at or above the threshold, else 'spoof'. Exit 0 whatever the decisions.",
        epilog=f"Example: facegate liveness door.jpg --pack {DEFAULT_LIVENESS_PACK} --threshold 0.6",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG/… files (EXIF orientation applied)")
    parser.add_argument("--pack", default=DEFAULT_LIVENESS_PACK,
                        help="model pack with a liveness block, name or manifest path "
                        f"(default: {DEFAULT_LIVENESS_PACK})")
    parser.add_argument("--threshold", type=float, default=None,
                        help="live-probability threshold in [0, 1] (default: the pack's liveness.threshold)")
    parser.add_argument("--threads", type=thread_count, default=None, help="ONNX Runtime intra-op threads (1 … CPUs)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from facegate.commands import print_json
    from facegate.errors import UsageError
    from facegate.imaging import load_image
    from facegate.packs.cache import ensure_prepared
    from facegate.packs.manifest import list_manifests, load_manifest
    from facegate.packs.registry import build_detector, build_liveness
    from facegate.scoring import liveness_threshold

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold}: must be between 0 and 1")
    images = [load_image(p) for p in args.images]  # fail on a bad file before loading models
    manifest = load_manifest(args.pack)
    if manifest.liveness is None:
        with_pad = []
        for name in sorted(list_manifests()):
            try:
                if load_manifest(name).liveness is not None:
                    with_pad.append(name)
            except Exception:  # noqa: BLE001 - a broken manifest elsewhere must not hide this message
                continue
        raise UsageError(
            f"pack {manifest.name!r} has no liveness block; use --pack with one of: {', '.join(with_pad) or 'none'}"
        )
    prepared = ensure_prepared(manifest)
    detector = build_detector(prepared, threads=args.threads)
    liveness = build_liveness(prepared, threads=args.threads)
    threshold = liveness_threshold(manifest, args.threshold)  # the pack's unless --threshold, as the daemon
    out = []
    for path, image, dets in zip(args.images, images, detector.detect(images), strict=True):
        scores = liveness.score(image, dets)
        faces = dets.to_json()
        for face, score in zip(faces, scores, strict=True):
            face["live_score"] = round(float(score), 4)
            face["decision"] = "live" if score >= threshold else "spoof"
        out.append({"image": str(path), "width": image.shape[1], "height": image.shape[0],
                    "pack": manifest.name, "threshold": threshold, "faces": faces})
    print_json(out)
    return 0
