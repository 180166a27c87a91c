"""Console tokens: stored hashed in a 0600 file, roles, revocation, and the `facegate admin token` commands."""

from __future__ import annotations

import json
import os
import stat

import pytest
from daemon_process import facegate

from facegate.console.tokens import TOKEN_PREFIX, TokenStore, role_rank, token_hash
from facegate.errors import ConfigError, UsageError


def test_a_token_is_stored_only_as_its_hash_in_a_private_file(tmp_path):
    store = TokenStore(tmp_path / "state" / "tokens.json")
    record, token = store.create("alice", "operator")
    assert token.startswith(TOKEN_PREFIX) and len(token) == len(TOKEN_PREFIX) + 43
    text = store.path.read_text()
    assert token not in text and token_hash(token) in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.verify(token) == record and record.role == "operator"
    assert store.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.verify("") is None and store.verify(None) is None and store.verify("Bearer " + token) is None


def test_revocation_is_seen_by_a_store_already_open(tmp_path):
    path = tmp_path / "tokens.json"
    console, cli = TokenStore(path), TokenStore(path)
    _, token = cli.create("bob", "viewer")
    assert console.verify(token) is not None
    revoked = cli.revoke("bob")
    assert revoked.revoked_at is not None
    assert console.verify(token) is None
    with pytest.raises(UsageError, match="no valid token named 'bob'"):
        cli.revoke("bob")
    _, again = cli.create("bob", "admin")  # the name is free again once revoked
    assert console.verify(again).role == "admin"


def test_bad_names_roles_and_duplicates_are_usage_errors(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    with pytest.raises(UsageError, match="--role 'root'"):
        store.create("alice", "root")
    with pytest.raises(UsageError, match="--name"):
        store.create("al ice\n", "viewer")
    store.create("alice", "viewer")
    with pytest.raises(UsageError, match="a valid token with this name exists"):
        store.create("alice", "admin")
    assert [role_rank(r) for r in ("viewer", "operator", "admin", "root")] == [0, 1, 2, -1]


def test_a_tokens_file_others_can_read_is_refused(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    _, token = store.create("alice", "admin")
    os.chmod(store.path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        TokenStore(store.path).verify(token)


def test_a_damaged_tokens_file_is_a_config_error(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="unreadable"):
        TokenStore(path).records()


def test_token_commands(tmp_path):
    config = tmp_path / "facegate.yaml"
    config.write_text(f"service: {{state_dir: {tmp_path / 'state'}}}\n")
    made = facegate("admin", "token", "create", "--name", "alice", "--role", "admin", "--config", str(config))
    assert made.returncode == 0, made.stderr
    out = json.loads(made.stdout)
    assert out["role"] == "admin" and out["token"].startswith(TOKEN_PREFIX)
    assert out["file"] == str(tmp_path / "state" / "admin-tokens.json")
    assert "shown only now" in made.stderr
    listed = facegate("admin", "token", "list", "--config", str(config))
    assert listed.returncode == 0 and out["token"] not in listed.stdout
    assert [t["name"] for t in json.loads(listed.stdout)["tokens"]] == ["alice"]
    revoked = facegate("admin", "token", "revoke", "alice", "--config", str(config))
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked"]["revoked_at"]
    again = facegate("admin", "token", "revoke", "alice", "--config", str(config))
    assert again.returncode == 2 and again.stderr.startswith("facegate: error: no valid token named 'alice'")
    bad = facegate("admin", "token", "create", "--name", "x", "--role", "root", "--config", str(config))
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert "Traceback" not in again.stderr + bad.stderr
