"""`facegate admin --config FILE` as a real subprocess on a free 127.0.0.1 port, with tokens made by the real
`facegate admin token create`, and an httpx client per token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import yaml
from daemon_process import facegate
from rtsp_server import free_port

#: A valid 8×8 black PNG (no face in it), for where any image will do.
TINY_PNG = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()


def write_config(tmp: Path, config: dict) -> Path:
    """``config`` with an admin section on a free port, a state folder and audit log in ``tmp`` unless given."""
    config.setdefault("service", {}).setdefault("state_dir", str(tmp / "state"))
    config.setdefault("audit", {"path": str(tmp / "audit.jsonl")})
    config.setdefault("gallery", {"path": str(tmp / "gallery")})
    admin = config.setdefault("admin", {})
    admin.setdefault("port", free_port())
    admin.setdefault("tokens_file", str(tmp / "state" / "admin-tokens.json"))
    path = tmp / "facegate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class ConsoleProcess:
    """The console for the config file ``config`` (written by ``write_config``)."""

    def __init__(self, config: Path, env: dict | None = None) -> None:
        self.config = config
        doc = yaml.safe_load(config.read_text())
        self.port = int(doc["admin"]["port"])
        self.scheme = "https" if doc["admin"].get("tls") else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.stderr = config.parent / "console.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def token(self, name: str, role: str) -> str:
        run = facegate("admin", "token", "create", "--name", name, "--role", role, "--config", str(self.config))
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)["token"]

    def start(self, timeout: float = 60.0) -> ConsoleProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "facegate.cli", "admin", "--config", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=self.stderr.open("w"), env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the console exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0, verify=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the console did not answer within {timeout} s:\n{self.log()}")

    def client(self, token: str | None = None, timeout: float = 120.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=False)

    def log(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"the console did not stop on SIGTERM:\n{self.log()}") from None
