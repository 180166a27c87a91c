"""``facegate door``: the door agent beside each lock (``facegate.door``)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from facegate.commands import print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``facegate door``."""
    door = sub.add_parser(
        "door", help="run the door agent: verify signed grants, drive the lock, report the door state",
        description="Subscribe to <prefix>/<door>/event and open the lock only for a grant that verifies (Ed25519 "
        "public key, or HMAC when allowed), names this door, has not expired, is not too far in the future and "
        "was never used before (replay cache on disk). Publishes the door state (retained) and passages. The "
        "output is released at start, at stop (SIGTERM) and on any error. --check validates the config and "
        "loads the keys without connecting or switching anything.",
        epilog="Examples: facegate door --config /etc/facegate-door/door.yaml --check\n"
        "          facegate door --config /etc/facegate-door/door.yaml\n"
        "(start from config/door.example.yaml; it names keys/signing.pub, the daemon's public key, to copy there)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    door.add_argument("--config", type=Path, required=True, help="door agent YAML (see config/door.example.yaml)")
    door.add_argument("--check", action="store_true", help="validate the config and key files, then exit")
    door.set_defaults(handler=_door)


def _door(args: argparse.Namespace) -> int:
    from facegate.door.config import load_door_config
    from facegate.door.verify import AcceptedKeys

    config = load_door_config(args.config)
    if args.check:
        from facegate.door.config import load_passage_key
        from facegate.signing import key_id

        keys = AcceptedKeys.from_files(config.keys.public_keys, config.keys.hmac_key_file, config.keys.allow_hmac)
        passage = load_passage_key(config)
        print_json({"passage_kid": key_id(passage.public_key()) if passage else None,
                    "file": str(args.config), "valid": True, "door": config.door, "output": config.output.kind,
                    "kids": sorted(keys.public_keys), "hmac_allowed": keys.allow_hmac})
        return 0
    return _run(config)


def _run(config) -> int:
    import sdnotify

    from facegate.door.agent import DoorAgent

    logging.getLogger("facegate").setLevel(logging.INFO)  # the agent logs its life at info level (journald)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    agent = DoorAgent(config)
    notify = sdnotify.SystemdNotifier()
    try:
        agent.start()
        # READY without waiting for the broker: the agent's job at start is to hold the lock locked
        notify.notify("READY=1")
        while not stop.wait(0.2):
            agent.tick()
            if agent.healthy():
                notify.notify("WATCHDOG=1")
    finally:
        notify.notify("STOPPING=1")
        agent.stop()
    return 0
