"""``facegate enroll``, ``facegate gallery list|show|remove|export|import|compact`` and ``facegate identify``.

Every command takes ``--gallery DIR`` (default ``$FACEGATE_GALLERY``, else ``$XDG_DATA_HOME/facegate/gallery``,
else ``~/.local/share/facegate/gallery``). JSON goes to stdout; refusals and errors to stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from facegate.commands import jitter_count, print_json, thread_count
from facegate.errors import FacegateError, GalleryError, UsageError
from facegate.gallery.location import default_gallery_path


def default_gallery() -> Path:
    """$FACEGATE_GALLERY, else $XDG_DATA_HOME/facegate/gallery, else ~/.local/share/facegate/gallery."""
    return default_gallery_path()


def _gallery_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gallery", type=Path, default=None, metavar="DIR",
                        help="gallery folder (default: $FACEGATE_GALLERY or $XDG_DATA_HOME/facegate/gallery)")


def _open(args: argparse.Namespace, must_exist: bool = True):
    from facegate.gallery import Gallery

    folder = args.gallery or default_gallery()
    if must_exist and not (folder / "gallery.db").is_file() and not (folder / "index.json").exists():
        raise GalleryError(f"{folder}: no gallery here yet; enrol someone first (`facegate enroll`) or give "
                           "--gallery DIR")
    return Gallery(folder)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``enroll``, ``gallery`` (with its sub-commands) and ``identify``."""
    enroll = sub.add_parser(
        "enroll", help="enrol photos of a person (quality gates, duplicate check)",
        epilog="Examples: facegate enroll --name 'Ada Lovelace' --group staff ada1.jpg ada2.jpg\n"
               "          facegate enroll --from-dir photos/   (photos/<person>/<image>, one folder per person)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _gallery_arg(enroll)
    enroll.add_argument("images", nargs="*", metavar="IMAGE", help="photos of the person (with --name)")
    enroll.add_argument("--name", help="identity name (created if new; more photos add templates)")
    enroll.add_argument("--from-dir", type=Path, metavar="DIR", help="folder with one sub-folder per person")
    enroll.add_argument("--group", action="append", default=[], metavar="G", help="access group (repeatable)")
    enroll.add_argument("--force", action="store_true",
                        help="enrol even when the gallery would admit the face as another identity (different "
                        "people who look alike: the two become lookalikes, see `gallery list --lookalikes`)")
    enroll.add_argument("--pack", default=None, help="model pack (default: the gallery's, or 'default')")
    enroll.add_argument("--threads", type=thread_count, default=None, help="ONNX Runtime intra-op threads (1 … CPUs)")
    enroll.add_argument("--jitters", type=jitter_count, default=0, metavar="N",
                        help="template = mean descriptor of N jittered copies of the face (chip, mirror, dlib "
                        "jitter_image perturbations; dlib pack only; N× slower). Default 0: plain")
    enroll.set_defaults(handler=_enroll)

    ident = sub.add_parser("identify", help="1:N search: who is in these photos (JSON per face)",
                           epilog="Example: facegate identify --gallery ./gallery door.jpg")
    _gallery_arg(ident)
    ident.add_argument("images", nargs="+", metavar="IMAGE")
    ident.add_argument("-k", "--top", type=int, default=3, help="identities per face (default 3)")
    ident.add_argument("--pack", default=None, help="model pack (default: the gallery's)")
    ident.add_argument("--threads", type=thread_count, default=None, help="ONNX Runtime intra-op threads (1 … CPUs)")
    ident.set_defaults(handler=_identify)

    gallery = sub.add_parser("gallery", help="list, show, remove, export, import, compact the gallery",
                             epilog="Example: facegate gallery list --gallery ./gallery")
    gsub = gallery.add_subparsers(dest="gallery_command", metavar="ACTION", parser_class=type(gallery))
    gallery.set_defaults(handler=lambda a: (gallery.print_help(sys.stderr), 2)[1])
    for name, help_text, example in (
        ("list", "identities with their groups and template counts (--lookalikes: pairs the threshold does not "
         "keep apart)", "facegate gallery list --lookalikes --config /etc/facegate/facegate.yaml"),
        ("show", "one identity with its templates' quality records", "facegate gallery show 'Ada Lovelace'"),
        ("remove", "erase an identity (run compact to wipe it from disk)", "facegate gallery remove 'Ada Lovelace'"),
        ("export", "write a portable JSON-lines file with all templates", "facegate gallery export backup.jsonl"),
        ("import", "add identities from an export of the same pack", "facegate gallery import backup.jsonl"),
        ("compact", "rewrite index and database without erased data", "facegate gallery compact"),
    ):
        p = gsub.add_parser(name, help=help_text, epilog=f"Example: {example}")
        _gallery_arg(p)
        if name in ("show", "remove"):
            p.add_argument("identity", help="identity name (or numeric id)")
        if name in ("export", "import"):
            p.add_argument("file", type=Path, help="JSON-lines export file")
        if name == "export":
            p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
        if name == "list":
            p.add_argument("--lookalikes", action="store_true",
                           help="also list the pairs of identities closer to each other than the threshold (any two "
                           "templates), with their closest score and the margin the daemon requires between them")
            p.add_argument("--config", type=Path, default=None, metavar="FILE",
                           help="the daemon's config: its decision section (threshold or false_accept_rate, k, n) "
                           "and pack give the security level shown (default: built-in defaults)")
            rate = p.add_mutually_exclusive_group()
            rate.add_argument("--threshold", type=_finite, default=None, help="show the rate of this fixed threshold")
            rate.add_argument("--false-accept-rate", type=_rate, default=None, metavar="F",
                              help="show the threshold this goal gives with the gallery (e.g. 1e-4)")
        p.set_defaults(handler=globals()[f"_gallery_{name}"])


def _finite(text: str) -> float:
    """An argparse type: a finite number (argparse turns the ValueError into a usage error, exit 2)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _rate(text: str) -> float:
    """An argparse type: a false-accept rate, 0 < F < 1 (as decision.false_accept_rate)."""
    value = _finite(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1 (exclusive), e.g. 1e-4")
    return value


def _load_pipeline(args: argparse.Namespace, gallery_pack: str | None):
    from facegate.pipeline import FacePipeline

    pack = args.pack or gallery_pack or "default"
    return FacePipeline.load(pack, threads=args.threads, with_liveness=False)


def _check_names(args: argparse.Namespace, people: list[tuple[str, list[Path]]]) -> None:
    """Usage errors (exit 2) for a bad --name, --group or person folder name, before any model loads."""
    from facegate.gallery.validate import group_problem, name_problem

    for group in args.group:
        problem = group_problem(group)
        if problem:
            raise UsageError(f"--group: {problem}")
    for name, files in people:
        problem = name_problem(name)
        if problem:
            where = f"--from-dir folder {str(files[0].parent)!r}" if args.from_dir else "--name"
            raise UsageError(f"{where}: {problem}")


def _shown(text: str) -> str:
    """``text`` for a terminal line: as is when printable, else its escaped ``repr``."""
    return text if text.isprintable() else repr(text)


def _enroll(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from facegate.gallery import Gallery
    from facegate.gallery.enrol import Enroller, scan_folder

    if bool(args.from_dir) == bool(args.name):
        raise UsageError("give either --name NAME with IMAGE files, or --from-dir DIR")
    if args.name and not args.images:
        raise UsageError(f"--name {args.name!r}: give at least one IMAGE")
    if args.from_dir and args.images:
        raise UsageError("--from-dir takes no IMAGE arguments")
    people = scan_folder(args.from_dir) if args.from_dir else [(args.name, [Path(p) for p in args.images])]
    _check_names(args, people)
    people = [(name.strip(), files) for name, files in people]
    outcomes = []
    interrupted = False
    error: str | None = None
    total = sum(len(files) for _, files in people)
    folder = args.gallery or default_gallery()
    gallery = Gallery(folder)
    try:
        pack_name = gallery.pack.name if gallery.pack else None
        pipeline = _load_pipeline(args, pack_name)
        enroller = Enroller(gallery, pipeline, force=args.force, jitters=args.jitters)
        pack_name = enroller.pack.name
        try:
            with tqdm(total=total, desc="enrolling", unit="photo", file=sys.stderr, disable=total < 2) as bar:
                for name, files in people:
                    for outcome in enroller.enrol_iter(name, files, args.group, progress=bar.update):
                        outcomes.append(outcome)
        except KeyboardInterrupt:
            # Each photo is its own transaction: everything in `outcomes` is committed, the photo being
            # processed was rolled back. Closing the gallery (below) saves the index.
            interrupted = True
        except FacegateError as exc:  # e.g. the disk filled: what is in `outcomes` stays committed
            error = str(exc)
    finally:
        try:
            gallery.close()
        except OSError as exc:  # saving the search index (a full disk): gallery.db holds every commit
            error = error or (f"{folder}: cannot save the search index ({exc.strerror or exc}); every template "
                              "listed as enrolled is committed in gallery.db, and the index is rebuilt from it at "
                              "the next open")
    refused = [o for o in outcomes if o.status == "refused"]
    skipped = [o for o in outcomes if o.status == "skipped"]
    for o in skipped:
        print(f"facegate: skipped {_shown(o.file)} ({o.identity!r}): already enrolled", file=sys.stderr)
    for o in refused:
        print(f"facegate: refused {_shown(o.file)} ({o.identity!r}): {_shown(str(o.reason))}", file=sys.stderr)
    for o in outcomes:
        if o.status == "enrolled" and o.lookalike:
            other = o.lookalike["identity"]
            print(f"facegate: lookalike {_shown(o.file)} ({o.identity!r}): enrolled, but this face also scores "
                  f"{o.lookalike['score']} against {_shown(other)!r}, within the threshold: the two are lookalikes "
                  "and the daemon grants either only when one beats the other by decision.lookalike_margin "
                  "(`facegate gallery list --lookalikes`)", file=sys.stderr)
    report = {
        "gallery": str(folder), "pack": pack_name,
        "enrolled": len(outcomes) - len(refused) - len(skipped), "skipped": len(skipped), "refused": len(refused),
        "results": [o.to_json() for o in outcomes],
    }
    if error is not None:
        report["error"] = error
        print_json(report)
        print(f"facegate: error: {error}; stopped after {len(outcomes)} of {total} photos — the JSON report on "
              "stdout lists what was committed; run the same command again to continue (enrolled photos are "
              "skipped)", file=sys.stderr)
        return 1
    if interrupted:
        report["interrupted"] = True
        print_json(report)
        print(f"facegate: interrupted after {len(outcomes)} of {total} photos; the report above lists what was "
              "committed — run the same command again to continue (enrolled photos are skipped)", file=sys.stderr)
        return 130
    print_json(report)
    if refused:
        print(f"facegate: error: {len(refused)} of {len(outcomes)} photos refused (reasons above; "
              "the JSON report on stdout lists every file)", file=sys.stderr)
        return 1
    return 0


def _identify(args: argparse.Namespace) -> int:
    from facegate.gallery.enrol import identify
    from facegate.imaging import load_image

    for path in args.images:
        load_image(path)  # a bad file fails before the models load
    if args.top < 1:
        raise UsageError(f"-k {args.top}: ask for at least one identity")
    with _open(args) as gallery:
        pipeline = _load_pipeline(args, gallery.pack.name if gallery.pack else None)
        print_json(identify(gallery, pipeline, args.images, k=args.top))
    return 0


def _gallery_list(args: argparse.Namespace) -> int:
    from facegate.config import Config
    from facegate.config_file import load_config

    config = load_config(args.config) if args.config else Config()
    if args.gallery is None and config.gallery.path:
        args.gallery = Path(config.gallery.path)
    decision = config.decision
    if args.threshold is not None or args.false_accept_rate is not None:
        decision = decision.model_copy(update={"threshold": args.threshold,
                                               "false_accept_rate": args.false_accept_rate})
    with _open(args) as gallery:
        pack = config.pack if args.config else None
        security, scorer = _security(gallery, decision, pack)
        out = {**gallery.stats(), "security": security, "identities_list": [i.to_json() for i in gallery.identities()]}
        if args.lookalikes:
            out["lookalikes"] = _lookalikes(gallery, scorer, _lookalike_margin(gallery, decision, pack))
        print_json(out)
    return 0


def _lookalike_margin(gallery, decision, pack: str | None) -> float:
    """The lookalike margin the daemon would require (``scoring.margins``: the config's, else the pack's)."""
    from facegate.errors import FacegateError
    from facegate.packs.manifest import load_manifest
    from facegate.scoring import margins

    try:
        manifest = load_manifest(pack or gallery.pack.name) if (pack or gallery.pack) else None
    except FacegateError:
        manifest = None
    return margins(manifest, decision.margin, decision.lookalike_margin).lookalike


def _lookalikes(gallery, scorer, margin: float) -> dict:
    """``gallery list --lookalikes``: under the threshold in force (``_security``'s scorer), the margin the daemon
    requires between lookalikes and every pair (``gallery/lookalikes.py``)."""
    from facegate.gallery.lookalikes import Lookalikes

    if scorer is None:
        return {"margin_required": margin, "pairs": [], "note": "no threshold in force (see security)"}
    found = Lookalikes(scorer)
    found.update(*gallery.templates())
    names = {i.id: i.name for i in gallery.identities()}
    return {"metric": scorer.metric, "threshold": scorer.threshold, "margin_required": margin,
            "pairs": [{**pair, "margin_required": margin} for pair in found.to_json(names)]}


def _security(gallery, decision, pack: str | None) -> tuple[dict, object]:
    """The threshold the daemon would use with this gallery and what false-accept rate it gives
    (``Scorer.resolve``; the model is in facegate/scoring.py), or why it cannot be said; and that scorer (None when
    there is none). ``pack``: the config's (None: the gallery's own)."""
    from facegate.errors import FacegateError, FalseAcceptGoalError
    from facegate.gallery.binding import binding_problem, manifest_binding
    from facegate.packs.manifest import load_manifest, pack_calibration
    from facegate.scoring import Scorer

    if gallery.pack is None:
        return {"note": "empty gallery: no pack bound yet"}, None
    name = pack or gallery.pack.name
    templates = int(gallery.stats()["templates"])
    try:
        manifest = load_manifest(name)
        if problem := binding_problem(gallery.folder, gallery.pack, manifest_binding(manifest)):
            return {"pack": name, "error": problem}, None
        scorer = Scorer.resolve(manifest, decision.threshold, false_accept_rate=decision.false_accept_rate,
                                calibration=pack_calibration(manifest), templates=templates,
                                vote=(decision.k, decision.n))
    except FalseAcceptGoalError as exc:
        return {"pack": name, "templates": templates, "goal_met": False, "error": str(exc)}, None
    except FacegateError as exc:
        return {"pack": name, "error": str(exc)}, None
    assert scorer.basis is not None
    return {"pack": name, "threshold": scorer.threshold, "rule": scorer.describe(), "goal_met": True,
            **scorer.basis.to_json()}, scorer


def _gallery_show(args: argparse.Namespace) -> int:
    with _open(args) as gallery:
        print_json(gallery.identity(args.identity).to_json())
    return 0


def _gallery_remove(args: argparse.Namespace) -> int:
    with _open(args) as gallery:
        ident = gallery.remove(args.identity)
        print_json({"removed": ident.name, "identity_id": ident.id, "templates": ident.templates,
                    "note": "a running daemon stops recognising this identity within its gallery refresh interval "
                            "(config gallery.refresh_s, default 2 s); run `facegate gallery compact` to erase the "
                            "bytes from the database and index files"})
    return 0


def _gallery_export(args: argparse.Namespace) -> int:
    with _open(args) as gallery:
        print_json({"file": str(args.file), **gallery.export(args.file, force=args.force)})
    return 0


def _gallery_import(args: argparse.Namespace) -> int:
    from facegate.gallery import Gallery

    with Gallery(args.gallery or default_gallery()) as gallery:
        print_json({"file": str(args.file), **gallery.import_file(args.file)})
    return 0


def _gallery_compact(args: argparse.Namespace) -> int:
    with _open(args) as gallery:
        print_json(gallery.compact())
    return 0
