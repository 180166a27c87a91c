"""Serving the console: uvicorn on ``admin.listen``:``admin.port``, HTTPS with ``admin.tls``.

The socket is bound here before uvicorn starts, so that an address in use or a bad address is a ``ConfigError``
naming ``admin.port``/``admin.listen`` instead of a log line and an exit from inside the server. Plain HTTP on an
address other than loopback is refused unless ``admin.plain_http_on_network`` says otherwise (tokens would cross
the network in clear text): use ``admin.tls`` or a reverse proxy (README "Operator console").
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import ssl

from facegate.config import Config
from facegate.errors import ConfigError

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_admin(config: Config) -> None:
    """Refusals before anything opens: plain HTTP on the network, unreadable TLS files or a certificate that does not
    load. Raises ``ConfigError`` naming the key."""
    admin = config.admin
    if admin.tls is None and not is_loopback(admin.listen) and not admin.plain_http_on_network:
        raise ConfigError(f"admin.listen {admin.listen}: plain HTTP on a network address would send tokens in clear "
                          "text; give admin.tls (cert and key), keep 127.0.0.1 behind a reverse proxy with TLS, or "
                          "set admin.plain_http_on_network: true on a trusted segment")
    if admin.tls is not None:
        for key in ("cert", "key"):
            path = getattr(admin.tls, key)
            if not (os.path.isfile(path) and os.access(path, os.R_OK)):
                raise ConfigError(f"admin.tls.{key}: file {path} does not exist or is not readable")
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(admin.tls.cert, admin.tls.key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"admin.tls: the certificate {admin.tls.cert} and key {admin.tls.key} do not load "
                              f"({exc}); give a PEM certificate chain and its private key") from None


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``. Raises ``ConfigError`` when it cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise ConfigError(f"admin.listen/admin.port {host}:{port}: cannot listen ({exc.strerror or exc}); choose "
                          "another admin.port or stop what uses it") from None
    sock.set_inheritable(True)
    return sock


def serve(config: Config) -> int:
    """Run the console until SIGTERM/SIGINT; returns 0. Raises ``ConfigError`` for the refusals of ``check_admin``
    and ``bind``, and what opening the gallery, audit log or tokens file raises."""
    import uvicorn

    from facegate.console.app import create_app
    from facegate.console.context import Console

    check_admin(config)
    admin = config.admin
    sock = bind(admin.listen, admin.port)
    console = Console.from_config(config)
    try:
        if not any(r.revoked_at is None for r in console.tokens.records()):
            log.warning("event=console_no_tokens path=%s fix='facegate admin token create --name NAME --role admin "
                        "--config FILE'", console.tokens.path)
        tls = admin.tls
        server = uvicorn.Server(uvicorn.Config(
            create_app(console), log_config=None, access_log=False, server_header=False, lifespan="on",
            ssl_certfile=tls.cert if tls else None, ssl_keyfile=tls.key if tls else None,
            timeout_graceful_shutdown=3))
        scheme = "https" if tls else "http"
        log.info("event=console_serving url=%s://%s:%d/ gallery=%s audit=%s", scheme, admin.listen,
                 sock.getsockname()[1], console.people.folder, console.audit.path)
        # uvicorn re-raises SIGTERM/SIGINT once it has shut down; a no-op handler of ours (restored by uvicorn
        # before it re-raises) turns that into a normal return, so the gallery and audit log are closed below.
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            server.run(sockets=[sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        console.close()
        sock.close()
    return 0
