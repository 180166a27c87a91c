"""``facegate keys``: Ed25519 key pairs for version-2 event signatures (``facegate.signing``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facegate.commands import print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``facegate keys generate`` and ``facegate keys id``."""
    keys = sub.add_parser(
        "keys", help="Ed25519 key pairs for signed door events",
        description="The daemon signs door events with a private key; each door agent holds only the public keys "
        "it accepts (so a door cannot forge grants for another door).",
        epilog="Example: facegate keys generate --out /etc/facegate --name signing-2026")
    verbs = keys.add_subparsers(dest="verb", metavar="VERB")
    gen = verbs.add_parser(
        "generate", help="write NAME.key (private, 0600) and NAME.pub (public, 0644) into a folder",
        description="Write a new Ed25519 key pair: DIR/NAME.key (PKCS#8 PEM, mode 0600 whatever the umask; stays on "
        "the daemon's machine) and DIR/NAME.pub (SubjectPublicKeyInfo PEM, 0644; copy it to every door). Prints "
        "the paths and the key id (kid) as JSON. Never overwrites an existing file.",
        epilog="Example: facegate keys generate --out /etc/facegate --name signing-2026",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("--out", type=Path, required=True, metavar="DIR",
                     help="folder for the two files (created 0700 when missing)")
    gen.add_argument("--name", default="signing", help="file name stem (default: signing)")
    gen.set_defaults(handler=_generate)
    kid = verbs.add_parser(
        "id", help="print the key id (kid) of a public or private key file",
        description="The kid that version-2 events carry: the first 16 hex characters of SHA-256 over the raw "
        "32-byte public key.",
        epilog="Example: facegate keys id /etc/facegate/signing-2026.pub")
    kid.add_argument("file", type=Path)
    kid.set_defaults(handler=_key_id)
    keys.set_defaults(handler=lambda args: (keys.print_help(sys.stderr), 2)[1])


def _generate(args: argparse.Namespace) -> int:
    from facegate.signing import generate_key_pair

    pair = generate_key_pair(args.out, args.name)
    print_json({"private_key": str(pair.private), "public_key": str(pair.public), "kid": pair.kid,
                "alg": "ed25519"})
    print(f"facegate: wrote {pair.private} (keep it on the daemon's machine) and {pair.public} (copy it to the "
          f"doors); kid {pair.kid}", file=sys.stderr)
    return 0


def _key_id(args: argparse.Namespace) -> int:
    from facegate.fileio import open_regular
    from facegate.signing import key_id, load_private_key, load_public_key

    try:  # only the first bytes, and never from a device or FIFO (the loaders below refuse those by name)
        with open_regular(args.file) as handle:
            head = handle.read(200)
    except OSError:
        head = b""  # the loaders below report the missing/unreadable file with the usual message
    public = load_private_key(args.file).public_key() if b"PRIVATE KEY" in head else load_public_key(args.file)
    print_json({"file": str(args.file), "kid": key_id(public), "alg": "ed25519"})
    return 0
