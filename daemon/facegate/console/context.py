"""Everything the console's routes share, built from the daemon's own config file (``Console.from_config``).

The console is its own process (``facegate admin --config FILE``) reading the same config as the daemon: the same
gallery folder (changes go through ``Gallery``/``Enroller``, the daemon follows them every ``gallery.refresh_s``),
the same audit log (the decision log and the live stream are that file; the console appends its admin records to
it), the daemon's ``state.json`` (cameras, doors, the pack in force) and the snapshots folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facegate.config import Config
from facegate.config_checks import default_state_dir
from facegate.console.audit_reader import AuditIndex
from facegate.console.people import People
from facegate.console.stream import Broadcaster
from facegate.console.tokens import TokenStore
from facegate.gallery.location import default_gallery_path
from facegate.runtime.audit import AuditLog
from facegate.runtime.snapshots import snapshots_folder

#: The tokens file's name in the state folder when ``admin.tokens_file`` is not set.
TOKENS_NAME = "admin-tokens.json"


def tokens_path(config: Config) -> Path:
    """``admin.tokens_file``, else ``admin-tokens.json`` in the state folder."""
    return Path(config.admin.tokens_file) if config.admin.tokens_file else default_state_dir(config) / TOKENS_NAME


@dataclass
class Console:
    """The console's parts (see the module docstring)."""

    config: Config
    tokens: TokenStore
    index: AuditIndex
    audit: AuditLog
    people: People
    state_path: Path
    snapshots: Path | None
    broadcaster: Broadcaster

    @classmethod
    def from_config(cls, config: Config, *, preload: bool = True) -> Console:
        """Open the audit log (for appending), the gallery and the tokens file of ``config``; ``preload`` starts
        loading the enrolment models in the background. Raises ``ConfigError``/``GalleryError`` naming the file."""
        state = default_state_dir(config)
        audit_path = Path(config.audit.path or state / "audit.jsonl")
        audit = AuditLog(audit_path)
        index = AuditIndex(audit_path)
        folder = Path(config.gallery.path) if config.gallery.path else default_gallery_path()
        try:
            people = People(folder, config.pack, audit, threads=1)
        except BaseException:
            audit.close()
            raise
        if preload:
            people.preload()
        snaps = snapshots_folder(config, state) if config.snapshots.enabled else None
        return cls(config, TokenStore(tokens_path(config)), index, audit, people, state / "state.json", snaps,
                   Broadcaster(index))

    def close(self) -> None:
        self.people.close()
        self.audit.close()
