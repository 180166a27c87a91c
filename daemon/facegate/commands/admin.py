"""``facegate admin`` (the operator console) and ``facegate admin token create|list|revoke``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from facegate.commands import print_json


def _config_arg(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # the leaves take --config too; SUPPRESS keeps them from overwriting a --config given before the verb
    parser.add_argument("--config", type=Path, metavar="FILE", default=argparse.SUPPRESS if suppress else None,
                        help="the daemon's YAML config (admin:, gallery:, audit:, service.state_dir); default: "
                        "built-in defaults")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``facegate admin`` and its ``token`` verbs."""
    admin = sub.add_parser(
        "admin", help="the operator console: web page and HTTP API (people, decisions, cameras, doors)",
        description="Serve the operator console on admin.listen:admin.port (default 127.0.0.1:8470): a web page "
        "and a JSON API (OpenAPI at /api/openapi.json) over the daemon's gallery, audit log and state file. Run it "
        "beside `facegate run` with the same config, as the same user. Every API call needs a token: create the "
        "first one with `facegate admin token create --name NAME --role admin`.",
        epilog="Examples: facegate admin --config /etc/facegate/facegate.yaml\n"
               "          facegate admin token create --name alice --role admin --config /etc/facegate/facegate.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_arg(admin, suppress=False)
    admin.set_defaults(handler=_serve)
    verbs = admin.add_subparsers(dest="admin_command", metavar="VERB", parser_class=type(admin))
    token = verbs.add_parser("token", help="create, list or revoke API tokens",
                             epilog="Example: facegate admin token list --config facegate.yaml")
    tverbs = token.add_subparsers(dest="token_command", metavar="ACTION", parser_class=type(admin))
    token.set_defaults(handler=lambda a: (token.print_help(sys.stderr), 2)[1])
    create = tverbs.add_parser("create", help="create a token; it is printed once (only its hash is stored)",
                               epilog="Example: facegate admin token create --name alice --role operator")
    create.add_argument("--name", required=True, help="who holds it (written into the audit log with each change)")
    create.add_argument("--role", required=True, choices=("viewer", "operator", "admin"),
                        help="viewer: read; operator: enrol, rename, groups, reviews; admin: also erase and compact")
    create.set_defaults(handler=_create)
    listing = tverbs.add_parser("list", help="tokens with their names, roles and dates (never the tokens)",
                                epilog="Example: facegate admin token list")
    listing.set_defaults(handler=_list)
    revoke = tverbs.add_parser("revoke", help="revoke a token by name or id (a running console refuses it at once)",
                               epilog="Example: facegate admin token revoke alice")
    revoke.add_argument("token", metavar="NAME_OR_ID")
    revoke.set_defaults(handler=_revoke)
    for leaf in (token, create, listing, revoke):
        _config_arg(leaf, suppress=True)


def _config(args: argparse.Namespace):
    from facegate.config import Config
    from facegate.config_file import load_config

    return load_config(args.config) if getattr(args, "config", None) else Config()


def _store(args: argparse.Namespace):
    from facegate.console.context import tokens_path
    from facegate.console.tokens import TokenStore

    return TokenStore(tokens_path(_config(args)))


def _serve(args: argparse.Namespace) -> int:
    from facegate.console.server import serve

    if not args.debug:
        logging.getLogger("facegate").setLevel(logging.INFO)
    return serve(_config(args))


def _create(args: argparse.Namespace) -> int:
    store = _store(args)
    record, token = store.create(args.name, args.role)
    print_json({**record.public(), "token": token, "file": str(store.path)})
    print(f"facegate: token for {record.name!r} ({record.role}) created; it is shown only now — give it to its "
          "holder, who pastes it into the console's page or sends it as 'Authorization: Bearer TOKEN'",
          file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    store = _store(args)
    print_json({"file": str(store.path), "tokens": [r.public() for r in store.records()]})
    return 0


def _revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    print_json({"revoked": store.revoke(args.token).public(), "file": str(store.path)})
    return 0
