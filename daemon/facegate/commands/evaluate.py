"""``facegate eval lfw|openset|calibrate``: accuracy of a model pack on LFW (verification and open-set 1:N) and its
calibration file (impostor score distribution on every data set, ``facegate/calibration.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from facegate.commands import jitter_count, print_json, thread_count

LFW_EXAMPLE = (
    "Example: facegate eval lfw --root ../shared/data/lfw/lfw-deepfunneled --pairs ../shared/data/lfw/pairs.txt "
    "--out eval-out"
)
#: Most images per detector/embedder batch: a batch is held decoded at once (1024 LFW images ≈ 190 MB).
MAX_BATCH = 1024
OPENSET_EXAMPLE = "Example: facegate eval openset --root ../shared/data/lfw/lfw-deepfunneled --out eval-out"
CALIBRATE_EXAMPLE = (
    "Example: facegate eval calibrate --pack default --lfw ../shared/data/lfw --lfw-pairs ../shared/data/lfw/pairs.txt "
    "--enroll-examples ../shared/data/enroll_examples --out models/default.calibration.json"
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack", default="default", help="model pack name or manifest path (default: default)")
    parser.add_argument("--out", type=Path, default=Path("facegate-eval"),
                        help="folder for the JSON report and the PNG plot (default: ./facegate-eval)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="embedding cache file (default: $XDG_CACHE_HOME/facegate/eval/embeddings.sqlite)")
    parser.add_argument("--groups", type=Path, default=None, metavar="CSV",
                        help="bias view: CSV of identity,group lines; reports rates per group")
    parser.add_argument("--batch", type=int, default=32, help="images per detector/embedder batch (default 32)")
    parser.add_argument("--threads", type=thread_count, default=None, help="ONNX Runtime intra-op threads (1 … CPUs)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--jitters", type=jitter_count, default=0, metavar="N",
                        help="embed each image as the mean of N jittered copies (chip, mirror, dlib jitter_image "
                        "perturbations; dlib recogniser only; N× the embedding time). Default 0: plain")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``facegate eval …``."""
    ev = sub.add_parser(
        "eval",
        help="accuracy on LFW: verification (View 2) and open-set 1:N",
        description="Measure a model pack on LFW. JSON report on stdout and in --out, plots as PNG.",
        epilog=LFW_EXAMPLE,
    )
    verbs = ev.add_subparsers(dest="verb", metavar="VERB")
    lfw = verbs.add_parser(
        "lfw",
        help="LFW View 2 10-fold verification: accuracy, TAR@FAR, EER, AUC, ROC plot",
        description="LFW View 2 protocol: 10 folds; for each, the threshold of best accuracy on the other 9 is "
        "tested on it. Images without a detected face are embedded from a fixed central box and counted.",
        epilog=LFW_EXAMPLE,
    )
    lfw.add_argument("--root", type=Path, required=True, help="LFW image folder (<Name>/<Name>_NNNN.jpg)")
    lfw.add_argument("--pairs", type=Path, required=True, help="LFW View 2 pairs.txt")
    lfw.add_argument("--limit-folds", type=int, default=None, metavar="K", help="use only the first K folds (≥ 2)")
    lfw.add_argument("--max-pairs-per-fold", type=int, default=None, metavar="N",
                     help="use only the first N matched and N mismatched pairs of each fold (quick runs)")
    _common(lfw)
    lfw.set_defaults(handler=_lfw)
    openset = verbs.add_parser(
        "openset",
        help="open-set 1:N on LFW: rank-1, FNIR at FPIR 0.3 %% and 1 %%, DET plot",
        description="Enrol the first image of every identity with ≥ 2 images; search their other images (mated) "
        "and every single-image identity (non-mated) exhaustively. Also an all-pairs 1:1 FMR/FNMR table.",
        epilog=OPENSET_EXAMPLE,
    )
    openset.add_argument("--root", type=Path, required=True, help="LFW image folder (<Name>/<Name>_NNNN.jpg)")
    openset.add_argument("--max-identities", type=int, default=None, metavar="N",
                         help="use only the first N identities by name (quick runs)")
    _common(openset)
    openset.set_defaults(handler=_openset)
    cal = verbs.add_parser(
        "calibrate",
        help="write a pack's calibration: FMR against threshold from all-pairs impostor comparisons",
        description="Compare every pair of the LFW View 2 images and of the labelled enroll_examples faces, and "
        "write the impostor and genuine score distributions to a calibration file (decision.false_accept_rate "
        "derives the threshold from it). Prints the file's sha256 for the manifest's calibration block.",
        epilog=CALIBRATE_EXAMPLE,
    )
    cal.add_argument("--lfw", type=Path, default=None, metavar="DIR", help="LFW folder (<Name>/<Name>_NNNN.jpg)")
    cal.add_argument("--lfw-pairs", type=Path, default=None, metavar="FILE", help="LFW View 2 pairs.txt")
    cal.add_argument("--enroll-examples", type=Path, default=None, metavar="DIR",
                     help="../shared/data/enroll_examples (labelled faces, evaluation/enroll_set.py)")
    cal.add_argument("--force", action="store_true", help="overwrite the --out file")
    _common(cal)
    cal.set_defaults(handler=_calibrate)
    ev.set_defaults(handler=lambda args: (ev.print_help(), 2)[1])


def _setup(args: argparse.Namespace):
    from facegate.errors import UsageError
    from facegate.evaluation.embeddings_cache import EmbeddingCache, default_cache_path

    if not 1 <= args.batch <= MAX_BATCH:
        raise UsageError(f"--batch {args.batch}: must be from 1 to {MAX_BATCH} (images held decoded at once)")
    if args.groups is not None:
        from facegate.evaluation.bias import load_groups

        load_groups(args.groups)  # fail before minutes of embedding
    from facegate.pipeline import FacePipeline

    pipeline = FacePipeline.load(args.pack, threads=args.threads, with_liveness=False)
    return pipeline, EmbeddingCache(args.cache or default_cache_path())


def _lfw(args: argparse.Namespace) -> int:
    from facegate.evaluation.lfw import evaluate_lfw, parse_pairs, resolve_root

    resolve_root(args.root)
    parse_pairs(args.pairs)
    pipeline, cache = _setup(args)
    try:
        report = evaluate_lfw(pipeline, args.root, args.pairs, cache=cache, limit_folds=args.limit_folds,
                              max_pairs_per_fold=args.max_pairs_per_fold, out_dir=args.out,
                              groups_csv=args.groups, progress=not args.no_progress, batch=args.batch,
                              plot=not args.no_plot, jitters=args.jitters)
    finally:
        cache.close()
    return _print_report(report)


def _openset(args: argparse.Namespace) -> int:
    from facegate.errors import UsageError
    from facegate.evaluation.lfw import resolve_root
    from facegate.evaluation.openset import evaluate_openset

    resolve_root(args.root)
    if args.max_identities is not None and args.max_identities < 3:
        raise UsageError(f"--max-identities {args.max_identities}: must be ≥ 3")
    pipeline, cache = _setup(args)
    try:
        report = evaluate_openset(pipeline, args.root, cache=cache, max_identities=args.max_identities,
                                  out_dir=args.out, groups_csv=args.groups, progress=not args.no_progress,
                                  batch=args.batch, plot=not args.no_plot, jitters=args.jitters)
    finally:
        cache.close()
    return _print_report(report)


def _print_report(report: dict) -> int:
    """The report on stdout; exit 1 with the reason when its files could not be written (a full disk)."""
    import sys

    print_json(report)
    if report.get("output_error"):
        print(f"facegate: error: {report['output_error']}", file=sys.stderr)
        return 1
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from facegate.errors import UsageError
    from facegate.evaluation.calibrate import calibrate
    from facegate.evaluation.lfw import parse_pairs, resolve_root

    if args.lfw is not None:
        resolve_root(args.lfw)
        if args.lfw_pairs is None:
            raise UsageError("--lfw needs --lfw-pairs FILE (LFW View 2 pairs.txt)")
        parse_pairs(args.lfw_pairs)
    if args.enroll_examples is not None and not args.enroll_examples.is_dir():
        raise UsageError(f"--enroll-examples {args.enroll_examples}: no such folder")
    if args.lfw is None and args.enroll_examples is None:
        raise UsageError("give at least one data set: --lfw DIR --lfw-pairs FILE and/or --enroll-examples DIR")
    out = args.out if args.out.suffix == ".json" else args.out / "calibration.json"
    if out.exists() and not args.force:
        raise UsageError(f"{out}: exists; give --force to overwrite it")
    pipeline, cache = _setup(args)
    try:
        cal = calibrate(pipeline, args.lfw, args.lfw_pairs, args.enroll_examples, cache=cache, batch=args.batch,
                        progress=not args.no_progress)
    finally:
        cache.close()
    from facegate.fileio import write_atomic

    data = cal.dumps()
    try:
        write_atomic(out, data)
        out.chmod(0o644)  # shipped beside the manifest: world-readable like it
    except OSError as exc:
        raise UsageError(f"{out}: cannot write the calibration file ({exc.strerror or exc})") from None
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    print_json({"file": str(out), "sha256": digest, "pack": cal.pack, "floor": cal.floor,
                "datasets": cal.describe()["datasets"],
                "manifest": {"calibration": {"file": out.name, "sha256": digest}}})
    return 0
