"""A real Mosquitto broker for tests: free 127.0.0.1 port, temp config, start/stop/restart; plus a subscriber.

Use the ``mosquitto_broker`` fixture (defined in conftest.py for every test module)::

    def test_x(mosquitto_broker):
        pub = EventPublisher(host=mosquitto_broker.host, port=mosquitto_broker.port)

The broker keeps its port across ``stop()``/``start()``/``restart()`` and persists sessions and retained messages
(persistence on, in the temp folder), as a production broker would, so a subscriber with ``clean_session=False``
gets the QoS 1 messages published while it was away. Skips the test with the reason when no mosquitto binary exists.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    for name in MOSQUITTO_CANDIDATES:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_test_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for IP 127.0.0.1 (openssl); returns (ca.crt, server.crt, server.key)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=facegate test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


class Mosquitto:
    """One mosquitto process on 127.0.0.1:``port`` with its config, persistence and log in ``workdir``.

    ``users`` (name → password) turns anonymous access off and writes a password file (mosquitto_passwd);
    ``tls=True`` makes the listener TLS-only with a throw-away CA, whose certificate is ``ca_file``.
    """

    def __init__(self, workdir: Path, binary: str, port: int | None = None, *,
                 users: dict[str, str] | None = None, tls: bool = False) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "mosquitto.log"
        self.conf = self.workdir / "mosquitto.conf"
        extra = ""
        self.ca_file: Path | None = None
        if users:
            pw = self.workdir / "passwords"
            tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
            for i, (name, password) in enumerate(users.items()):
                flags = ["-b", "-c"] if i == 0 else ["-b"]
                subprocess.run([tool, *flags, str(pw), name, password], check=True, capture_output=True)
            extra += f"password_file {pw}\n"
        if tls:
            self.ca_file, cert, key = make_test_ca(self.workdir / "tls")
            extra += f"cafile {self.ca_file}\ncertfile {cert}\nkeyfile {key}\n"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'false' if users else 'true'}\n"
            f"{extra}"
            # started as root, mosquitto would switch to user "mosquitto", who cannot write the test's temp folder
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            f"log_dest file {self.log_path}\n"
            "log_type all\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err} (log {self.log_path})")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout_s} s")

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file and exits); clients see the connection close."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Subscriber:
    """A paho client collecting every message of ``topic`` (QoS 1) into ``messages`` (topic, payload, retain).

    With ``persistent=True`` it uses a fixed client id and ``clean_session=False``, like a door controller that
    must not miss events while it (or the broker) restarts.
    """

    def __init__(self, broker: Mosquitto, topic: str = "#", *, persistent: bool = False, client_id: str = "",
                 username: str | None = None, password: str | None = None, reconnect_s: float = 1.0) -> None:
        self.broker, self.topic = broker, topic
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        cid = client_id or (f"test-sub-{free_port()}" if persistent else "")
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid,
                                  clean_session=not persistent)
        self.client.reconnect_delay_set(reconnect_s, 2 * reconnect_s)  # type: ignore[arg-type] (seconds, floats too)
        self.connects: list[datetime] = []  # wall time of each (re)connection
        if username is not None:
            self.client.username_pw_set(username, password)
        if broker.ca_file is not None:
            self.client.tls_set(ca_certs=str(broker.ca_file))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if not reason.is_failure:
            self.connects.append(datetime.now(UTC))
            client.subscribe(self.topic, qos=1)
            self.connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def start(self, timeout_s: float = 10.0) -> Subscriber:
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(timeout_s):
            raise RuntimeError("test subscriber could not connect")
        time.sleep(0.2)  # let the SUBACK land before the test publishes
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def events(self, suffix: str = "/event") -> list[dict]:
        return [json.loads(p) for t, p, _ in self.snapshot() if t.endswith(suffix)]

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.snapshot() if t == topic]

    def wait_for(self, predicate, timeout_s: float = 10.0) -> bool:
        """Poll ``predicate(self)`` until true or ``timeout_s``; returns the last result."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return bool(predicate(self))
