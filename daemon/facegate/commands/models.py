"""``facegate models prepare|list``."""

from __future__ import annotations

import argparse

from facegate.commands import print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``facegate models …``."""
    models = sub.add_parser(
        "models",
        help="model packs: prepare the cache, list packs",
        description="Model packs (models/*.yaml). Nothing is downloaded: files come from installed PyPI packages "
        "or local paths.",
        epilog="Example: facegate models prepare --pack default",
    )
    verbs = models.add_subparsers(dest="verb", metavar="VERB")
    prepare = verbs.add_parser(
        "prepare",
        help="verify sha256 and build converted files into the cache",
        epilog="Example: FACEGATE_CACHE_DIR=/var/cache/facegate facegate models prepare --pack default",
    )
    prepare.add_argument("--pack", action="append", help="pack name or manifest path (repeatable; default: all)")
    prepare.add_argument("--force", action="store_true", help="rebuild converted files even if they look fine")
    prepare.set_defaults(handler=_prepare)
    listing = verbs.add_parser("list", help="show every pack, its licence notes and its state",
                               epilog="Example: facegate models list")
    listing.set_defaults(handler=_list)
    models.set_defaults(handler=lambda args: (models.print_help(), 2)[1])


def _prepare(args: argparse.Namespace) -> int:
    """Verify, build and then load every model of each pack (so a graph that does not match its manifest is
    reported here, not at the daemon's start). With ``--pack`` the first failure is the error; without it every
    pack is tried, failures are listed in the JSON and the exit code is 1."""
    import sys

    from facegate.errors import FacegateError
    from facegate.packs.cache import cache_root, prepare_pack
    from facegate.packs.manifest import list_manifests, load_manifest
    from facegate.pipeline import FacePipeline

    names = args.pack or sorted(list_manifests())
    results = []
    failed = 0
    for name in names:
        try:
            manifest = load_manifest(name)
            prepared = prepare_pack(manifest, force=args.force)
            FacePipeline(prepared, threads=1)  # loads and checks every graph against the manifest
        except FacegateError as exc:
            if args.pack:
                raise
            failed += 1
            print(f"facegate: error: pack {name!r}: {exc}", file=sys.stderr)
            results.append({"pack": name, "state": "invalid", "error": str(exc)})
            continue
        results.append({
            "pack": name,
            "name": manifest.name,
            "state": "prepared",
            "directory": str(prepared.directory),
            "detector": str(prepared.detector),
            "landmarks": str(prepared.landmarks) if prepared.landmarks else None,
            "recogniser": str(prepared.recogniser),
            "liveness": [str(p) for p in prepared.liveness],
        })
    print_json({"cache": str(cache_root()), "packs": results})
    return 1 if failed else 0


def _list(args: argparse.Namespace) -> int:
    from facegate.errors import FacegateError
    from facegate.packs.cache import pack_state
    from facegate.packs.manifest import list_manifests, load_manifest

    rows = []
    for name, path in sorted(list_manifests().items()):
        try:
            manifest = load_manifest(path)
        except FacegateError as exc:
            rows.append({"pack": name, "manifest": str(path), "state": "invalid", "error": str(exc)})
            continue
        licences = {"detector": manifest.detector.licence, "recogniser": manifest.recogniser.licence}
        if manifest.landmarks:
            licences["landmarks"] = manifest.landmarks.licence
        if manifest.liveness:
            licences["liveness"] = "; ".join(sorted({m.licence for m in manifest.liveness.models}))
        rows.append({
            "pack": name,
            "name": manifest.name,
            "manifest": str(path),
            "state": pack_state(manifest),
            "detector": manifest.detector.kind,
            "recogniser": manifest.recogniser.kind,
            "metric": manifest.recogniser.metric,
            "threshold": manifest.operating_point.threshold,
            "liveness": manifest.liveness is not None,
            "licences": licences,
        })
    print_json(rows)
    return 0
