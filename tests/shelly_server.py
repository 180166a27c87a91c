"""A real HTTP server on 127.0.0.1 speaking the documented Shelly Gen2 RPC subset a relay door output uses.

* ``POST /rpc`` with a JSON-RPC frame ``{"id", "src", "method", "params"}`` and ``GET /rpc/<Method>?k=v`` (both
  forms are documented in shelly-api-docs.shelly.cloud, gen2 General/RPCProtocol);
* ``Switch.Set`` (params ``id``, ``on`` required, ``toggle_after`` optional seconds) → ``{"was_on": bool}``; the
  flip-back timer switches the output back by itself, as the device does, even when the caller is gone;
* ``Switch.GetStatus`` → ``{"id", "output"}``; unknown methods / ids → a JSON-RPC ``error`` (code -105 / -114).

Every call is recorded (``calls``: monotonic time, method, params) so tests can count actuations; ``fail`` makes
the server answer 500 (a broken relay).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class ShellyRelay:
    def __init__(self, switches: int = 1) -> None:
        self.output = [False] * switches
        self.calls: list[tuple[float, str, dict]] = []
        self.fail = False
        self._timers: dict[int, threading.Timer] = {}
        self._lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet test output
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                if self.path != "/rpc":
                    return self._reply(404, {"error": "not found"})
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    frame = json.loads(self.rfile.read(length))
                except ValueError:
                    return self._reply(400, {"error": {"code": -32700, "message": "parse error"}})
                self._dispatch(frame.get("id"), frame.get("method"), frame.get("params") or {})

            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                if not url.path.startswith("/rpc/"):
                    return self._reply(404, {"error": "not found"})
                params = {k: json.loads(v[0]) if v[0] in ("true", "false") or v[0][:1].isdigit() else v[0]
                          for k, v in parse_qs(url.query).items()}
                self._dispatch(None, url.path[len("/rpc/"):], params)

            def _dispatch(self, req_id, method, params) -> None:
                if relay.fail:
                    return self._reply(500, {"error": {"code": -1, "message": "injected failure"}})
                result = relay.call(method, params)
                body = {"id": req_id, "src": "shellyplus1-test", **result}
                self._reply(200, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def call(self, method: str, params: dict) -> dict:
        with self._lock:
            self.calls.append((time.monotonic(), method, dict(params)))
            sid = params.get("id")
            if not isinstance(sid, int) or not 0 <= sid < len(self.output):
                return {"error": {"code": -105, "message": f"Argument 'id', value {sid!r} not found!"}}
            if method == "Switch.GetStatus":
                return {"result": {"id": sid, "output": self.output[sid]}}
            if method != "Switch.Set":
                return {"error": {"code": -114, "message": f"Method {method} failed: not found"}}
            if not isinstance(params.get("on"), bool):
                return {"error": {"code": -103, "message": "Invalid argument 'on'!"}}
            was_on = self.output[sid]
            self.output[sid] = params["on"]
            old = self._timers.pop(sid, None)
            if old is not None:
                old.cancel()
            after = params.get("toggle_after")
            if isinstance(after, int | float) and after > 0:
                timer = threading.Timer(after, self._flip_back, (sid, not params["on"]))
                timer.daemon = True
                self._timers[sid] = timer
                timer.start()
            return {"result": {"was_on": was_on}}

    def _flip_back(self, sid: int, value: bool) -> None:
        with self._lock:
            self.output[sid] = value
            self._timers.pop(sid, None)

    def ons(self) -> list[dict]:
        """The Switch.Set calls that switched on (each one an actuation or an extension)."""
        return [p for _, m, p in list(self.calls) if m == "Switch.Set" and p.get("on") is True]

    def start(self) -> ShellyRelay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for timer in list(self._timers.values()):
            timer.cancel()
