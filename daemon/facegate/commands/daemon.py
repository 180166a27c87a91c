"""``facegate run`` (the daemon) and ``facegate config check``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from facegate.commands import print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``facegate run`` and ``facegate config check``."""
    run = sub.add_parser(
        "run",
        help="run the access-control daemon (cameras → faces → door events)",
        description="Read the cameras, recognise faces against the gallery and publish signed door events over "
        "MQTT (every decision is also appended to the audit log, and printed as a JSON line on stdout). Without "
        "--config the built-in defaults apply (no broker: no door can be driven). Stops on SIGTERM/Ctrl-C; "
        "SIGHUP reloads the gallery and the config; exits by itself when every camera is a video file that "
        "has ended.",
        epilog="Examples: facegate run --camera ../shared/data/videos/stage_clip_640x360.mp4\n"
        "          facegate run --config /etc/facegate/facegate.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", type=Path, help="YAML config (see config/example.yaml); default: built-in defaults")
    run.add_argument("--camera", action="append", default=[], metavar="URL_OR_FILE",
                     help="extra camera: rtsp:// URL, USB index, /dev/videoN or video file (repeatable); ids cam1…")
    run.add_argument("--loop", action="store_true", help="loop video files given with --camera")
    run.set_defaults(handler=_run)

    config = sub.add_parser("config", help="check a config file",
                            description="Configuration files (see config/example.yaml for every key).",
                            epilog="Example: facegate config check config/example.yaml")
    verbs = config.add_subparsers(dest="verb", metavar="VERB")
    check = verbs.add_parser(
        "check", help="everything `facegate run` would refuse, with key paths and lines; exit 2 when invalid",
        description="Validate a config file and run every start-up check of `facegate run` (pack, liveness model, "
        "files and folders, signing key, time zones, cameras) without opening cameras, models or the broker. "
        "Prints every problem found, each with its key path and YAML line.",
        epilog="Example: facegate config check /etc/facegate/facegate.yaml")
    check.add_argument("file", type=Path)
    check.add_argument("--camera", action="append", default=[], metavar="URL_OR_FILE",
                       help="cameras that `facegate run` would get on its command line (as there)")
    check.set_defaults(handler=_check)
    config.set_defaults(handler=lambda args: (config.print_help(sys.stderr), 2)[1])


def _checked(path: Path | None, specs: list[str], loop: bool = False):
    """``check_file`` with the ``--camera`` specs numbered after the config's own cameras, as ``run`` does.
    Returns (config or None, extra cameras, issues)."""
    from facegate.config_checks import check_file
    from facegate.runtime.capture import cameras_from_args

    config, issues = check_file(path)
    if not specs:
        return config, [], issues
    extra = cameras_from_args(specs, loop=loop, first=len(config.cameras) + 1 if config else 1)
    config, issues = check_file(path, extra)
    return config, extra, issues


def _check(args: argparse.Namespace) -> int:
    from facegate.config_checks import config_warnings

    config, extra, issues = _checked(args.file, args.camera)
    warnings = config_warnings(config) if config is not None else []
    for issue in issues:
        print(f"facegate: error: {args.file}:{issue}", file=sys.stderr)
    for warning in warnings:
        print(f"facegate: warning: {args.file}: {warning}", file=sys.stderr)
    print_json({"file": str(args.file), "valid": not issues,
                "errors": [{"path": i.path, "line": i.line, "message": i.message} for i in issues],
                "warnings": warnings,
                "cameras": [c.id for c in [*config.cameras, *extra]] if config else None,
                "doors": [d.id for d in config.doors] if config else None})
    return 2 if issues else 0


def _run(args: argparse.Namespace) -> int:
    from facegate.errors import ConfigError
    from facegate.runtime.service import Service

    if not args.debug:  # the daemon logs its life at info level (journald keeps it)
        logging.getLogger("facegate").setLevel(logging.INFO)
    config, extra, issues = _checked(args.config, args.camera, args.loop)
    if issues or config is None:
        where = args.config or "built-in config"
        raise ConfigError(f"{where}: {len(issues)} problem(s) (`facegate config check` lists the same):\n"
                          + "\n".join(f"  {where}:{i}" for i in issues))
    return Service(config, config_path=args.config, extra_cameras=extra).run()
