"""A real RTSP server on 127.0.0.1 serving an H.264 MP4 file, for the capture and daemon end-to-end tests.

The server is GStreamer's RTSP server (``gst-rtsp-server``, Debian packages python3-gi, gir1.2-gst-rtsp-server-1.0
and the gstreamer1.0-plugins-*). Its Python bindings (``gi``) belong to Debian's ``/usr/bin/python3`` while
facegate runs in another interpreter, so this file is both:

* a script run by ``/usr/bin/python3``: ``rtsp_server.py FILE --port P [--mount /stream]`` serves FILE's video
  track without re-encoding (``qtdemux ! h264parse ! rtph264pay``), paced at the file's own rate; every client
  gets its own pipeline from the start of the file;
* ``RtspServer``, a helper the tests (any interpreter) use to start, stop and restart that script as a subprocess.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"


def gst_available() -> str | None:
    """None when the RTSP server can run here, else the reason it cannot."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is missing"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0');"
         "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
         "assert Gst.ElementFactory.find('rtph264pay') and Gst.ElementFactory.find('qtdemux')"],
        capture_output=True, text=True, timeout=60,
    )
    if probe.returncode != 0:
        return ("GStreamer's RTSP server is not installed (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
                "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad): "
                + (probe.stderr.strip().splitlines() or ["?"])[-1])
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    """Start/stop the RTSP server subprocess; ``url`` is ``rtsp://127.0.0.1:PORT/stream``."""

    def __init__(self, video: str | Path, port: int | None = None, mount: str = "/stream") -> None:
        self.video = str(video)
        self.port = port or free_port()
        self.mount = mount
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def start(self, timeout: float = 20.0) -> RtspServer:
        """Start the server and wait until it accepts TCP connections. Raises RuntimeError on failure."""
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, __file__, self.video, "--port", str(self.port), "--mount", self.mount],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ""},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"RTSP server exited with {self.proc.returncode}: {err[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"RTSP server did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve(video: str, port: int, mount: str) -> None:  # runs under /usr/bin/python3 with gi
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    location = video.replace("\\", "\\\\").replace('"', '\\"')
    factory.set_launch(
        f'( filesrc location="{location}" ! qtdemux name=d d.video_0 ! queue ! h264parse ! '
        "rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(False)
    server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"rtsp://127.0.0.1:{port}{mount}", flush=True)
    loop.run()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a video file over RTSP on 127.0.0.1 (GStreamer).")
    parser.add_argument("video")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--mount", default="/stream")
    args = parser.parse_args()
    if not Path(args.video).is_file():
        sys.exit(f"{args.video}: no such file")
    _serve(str(Path(args.video).resolve()), args.port, args.mount)


if __name__ == "__main__":
    main()
