"""API tokens of the operator console: created once, stored hashed, each with a role.

A token is ``fgt_`` + 43 URL-safe characters (32 random bytes from ``secrets``, so guessing one is 2^256 work);
only its SHA-256 is stored, so a stolen tokens file lets nobody in (the token has full entropy: no salt or slow
hash is needed, as for GitHub's and PyPI's API tokens). A request presents it as ``Authorization: Bearer <token>``;
``verify`` hashes it and compares with every stored hash using ``hmac.compare_digest`` (constant time).

Roles, each including the ones before it: ``viewer`` (read people, decisions, cameras, doors, the pack),
``operator`` (enrol, rename, change groups, review decisions, enrol from a snapshot), ``admin`` (erase identities,
compact the gallery, read the console's own activity). Tokens are managed with ``facegate admin token
create|list|revoke`` only — the API cannot create or widen a token.

The file (``admin.tokens_file``, default ``admin-tokens.json`` in the state folder) is JSON, written atomically with
mode 0600 under an ``flock``; a file that group or others can read is refused (``ConfigError``). The running console
re-reads it when it changes, so a revocation takes effect at the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from facegate.errors import ConfigError, UsageError
from facegate.fileio import folder_lock, write_atomic

ROLES = ("viewer", "operator", "admin")
TOKEN_PREFIX = "fgt_"
FILE_FORMAT = "facegate-admin-tokens"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def role_rank(role: str) -> int:
    """0 viewer, 1 operator, 2 admin; -1 for anything else."""
    return ROLES.index(role) if role in ROLES else -1


def token_hash(token: str) -> str:
    """Hex SHA-256 of the token's UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """One stored token: ``id`` (8 hex, shown in lists), ``name`` (who holds it; written into the audit log),
    ``role``, ``sha256`` of the token, ``created_at`` and ``revoked_at`` (RFC 3339 UTC; None while valid)."""

    id: str
    name: str
    role: str
    sha256: str
    created_at: str
    revoked_at: str | None = None

    def public(self) -> dict[str, Any]:
        """The record without its hash (for listings)."""
        return {k: v for k, v in asdict(self).items() if k != "sha256"}


class TokenStore:
    """The tokens file at ``path``. Thread-safe; safe against a concurrent ``facegate admin token`` process."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._records: list[TokenRecord] = []

    # -- reading -----------------------------------------------------------------------------------------------
    def _load(self) -> list[TokenRecord]:
        """The records, re-read when the file changed (inode, size or mtime). Raises ``ConfigError`` for a file that
        others can read or that is not a tokens file."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._records = None, []
            return []
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key == self._seen:
            return self._records
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"admin tokens file {self.path}: group or others can read it (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}); run chmod 600 {self.path}")
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if doc.get("format") != FILE_FORMAT:
                raise ValueError(f"format is not {FILE_FORMAT!r}")
            records = [TokenRecord(**r) for r in doc["tokens"]]
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"admin tokens file {self.path}: unreadable ({exc}); restore it or delete it and "
                              "create new tokens with `facegate admin token create`") from None
        self._seen, self._records = key, records
        return records

    def records(self) -> list[TokenRecord]:
        with self._lock:
            return list(self._load())

    def verify(self, token: str | None) -> TokenRecord | None:
        """The valid (not revoked) record of ``token``, or None. Every stored hash is compared in constant time, so
        the answer's timing does not tell how many characters matched."""
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = token_hash(token)
        found = None
        for record in self.records():
            if hmac.compare_digest(record.sha256, digest) and record.revoked_at is None:
                found = record
        return found

    # -- writing -----------------------------------------------------------------------------------------------
    def _save(self, records: list[TokenRecord]) -> None:
        doc = {"format": FILE_FORMAT, "version": 1, "tokens": [asdict(r) for r in records]}
        old = os.umask(0o077)  # write_atomic's temporary file is 0600 already; the folder too when it is new
        try:
            write_atomic(self.path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
            os.chmod(self.path, 0o600)
        finally:
            os.umask(old)

    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder_lock(self.path.parent, f".{self.path.name}.lock")

    def create(self, name: str, role: str) -> tuple[TokenRecord, str]:
        """A new token for ``name`` with ``role``; returns (its record, the token itself — shown once, never
        stored). Raises ``UsageError`` for a bad name or role, or a name that already has a valid token."""
        if not _NAME.match(name or ""):
            raise UsageError(f"--name {name!r}: use 1-64 letters, digits or _.@- (starting with a letter or digit)")
        if role not in ROLES:
            raise UsageError(f"--role {role!r}: choose one of {', '.join(ROLES)}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._lock, self._locked():
            self._seen = None
            records = self._load()
            if any(r.name == name and r.revoked_at is None for r in records):
                raise UsageError(f"--name {name!r}: a valid token with this name exists; revoke it first "
                                 f"(`facegate admin token revoke {name}`) or choose another name")
            ids = {r.id for r in records}
            rid = secrets.token_hex(4)
            while rid in ids:
                rid = secrets.token_hex(4)
            record = TokenRecord(rid, name, role, token_hash(token), _now())
            self._save([*records, record])
            self._seen = None
        return record, token

    def revoke(self, name_or_id: str) -> TokenRecord:
        """Revoke the valid token named ``name_or_id`` (or with that id); returns its record. Raises ``UsageError``
        when there is none."""
        with self._lock, self._locked():
            self._seen = None
            records = self._load()
            for i, r in enumerate(records):
                if r.revoked_at is None and name_or_id in (r.name, r.id):
                    revoked = TokenRecord(r.id, r.name, r.role, r.sha256, r.created_at, _now())
                    records = [*records[:i], revoked, *records[i + 1:]]
                    self._save(records)
                    self._seen = None
                    return revoked
        raise UsageError(f"no valid token named {name_or_id!r}; see `facegate admin token list`")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
