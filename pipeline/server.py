"""The browser view: an HTTP server (standard library) and the sink that feeds it.

Routes, and nothing else (every other path is 404; no path from a request ever reaches the file system):

    /            the page (pipeline/web/index.html, read once at start)
    /stream      the live frames as MJPEG (multipart/x-mixed-replace): an <img> plays it, no plug-ins
    /frame.jpg   the newest frame, one JPEG
    /stats       the HUD numbers as JSON (fps, latency, drops, status ...), polled by the page

While someone watches /stream, the ``Serve`` sink encodes each frame to JPEG once and publishes the
bytes in a ``FrameHub``; every viewer's thread waits on the hub's condition for a newer frame and sends
the newest one, skipping any it was too slow for. So viewers never slow the pipeline, and a slow viewer
only lags itself. Latency for this view is measured when a frame's JPEG is published. With nobody on
/stream only one frame a second is encoded (for /frame.jpg and the next viewer's first picture), so an
unwatched server costs next to nothing; its latency then stops where the JPEG would be made.
"""
from __future__ import annotations

import errno
import json
import logging
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

import cv2

from pipeline.hud import Tracker
from pipeline.stage import Stage
from train.errors import InvalidInputError, MediaError

log = logging.getLogger("segpipe.live")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080
BOUNDARY = "segpipe-frame"
UNWATCHED_EVERY_S = 1.0     # with no viewer on /stream, publish a frame this often
GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError, socket.timeout)  # viewer left


def parse_address(text: str | None) -> tuple[str, int]:
    """'HOST:PORT', ':PORT', 'PORT' or 'HOST' -> (host, port); the host is 127.0.0.1 unless given."""
    if text is None or text == "":
        return DEFAULT_HOST, DEFAULT_PORT
    text = str(text).strip()
    host, port = DEFAULT_HOST, str(DEFAULT_PORT)
    if text.startswith("["):                                    # [::1]:8080
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or port
    elif text.isdigit():
        port = text
    elif text.count(":") == 1:
        host, port = text.split(":")
        host = host or DEFAULT_HOST
    else:
        host = text
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInputError(f"--serve {text!r}: the port must be a number 0..65535, e.g. --serve 127.0.0.1:8080")
    return host, int(port)


class FrameHub:
    """The newest JPEG and its number; viewers wait on the condition for a newer one."""

    def __init__(self):
        self.cond = threading.Condition()
        self.seq = 0
        self.jpeg: bytes | None = None
        self.closed = False
        self.viewers = 0

    def publish(self, jpeg: bytes) -> None:
        with self.cond:
            self.seq += 1
            self.jpeg = jpeg
            self.cond.notify_all()

    def wait_newer(self, seq: int, timeout_s: float) -> tuple[int, bytes | None]:
        """The newest (seq, jpeg) once newer than ``seq`` (or the same ``seq`` after a timeout or close)."""
        with self.cond:
            self.cond.wait_for(lambda: self.seq > seq or self.closed, timeout_s)
            return self.seq, self.jpeg

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class Serve(Stage):
    """Encode each frame to JPEG once and hand the bytes to every viewer (with none, a frame a second);
    passes the frame on."""
    name = "serve"

    def __init__(self, hub: FrameHub, tracker: Tracker, quality: int = 80):
        super().__init__()
        if not 1 <= int(quality) <= 100:
            raise InvalidInputError(f"JPEG quality {quality} must be 1..100, e.g. 80")
        self.hub, self.tracker = hub, tracker
        self.params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        self.published_at = float("-inf")

    def process(self, frame):
        now = time.monotonic()
        if not self.hub.viewers and now - self.published_at < UNWATCHED_EVERY_S:
            self.tracker.record(frame.t_decoded)
            return frame
        self.published_at = now
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame.output, cv2.COLOR_RGB2BGR), self.params)
        if not ok:
            raise MediaError(f"could not encode frame {frame.index} as JPEG")
        self.hub.publish(buf.tobytes())
        self.tracker.record(frame.t_decoded)
        return frame


def _page() -> bytes:
    return resources.files("pipeline").joinpath("web", "index.html").read_bytes()


class LiveServer:
    """ThreadingHTTPServer for the page, the MJPEG stream and the stats; ``start()`` / ``stop()``."""

    def __init__(self, host: str, port: int, hub: FrameHub, stats, *, page: bytes | None = None):
        self.hub, self.stats = hub, stats
        self.page = page if page is not None else _page()
        handler = type("LiveHandler", (_Handler,), {"live": self})
        try:
            self.httpd = _Server((host, port), handler)
        except (socket.gaierror, UnicodeError) as e:      # (gaierror is an OSError: first)
            why = getattr(e, "strerror", None) or e
            raise InvalidInputError(f"cannot serve on {host}:{port}: {why}: use an address of this machine, "
                                    f"e.g. --serve 127.0.0.1:8080 (or 0.0.0.0:8080 for every interface)") from None
        except OSError as e:
            why = "the port is in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise InvalidInputError(f"cannot serve on {host}:{port}: {why}: pick another, e.g. "
                                    f"--serve {host}:{port + 1 if port else 8081}") from None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return host, port

    @property
    def url(self) -> str:
        """Where a browser finds it: on every interface (0.0.0.0, ::), by this machine's name."""
        host, port = self.address
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="segpipe-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.hub.close()                       # viewers' threads leave their loops
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
        self.httpd.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A viewer leaving mid-response is normal; anything else is one logged line. Never the standard
        library's traceback on the user's terminal."""
        e = sys.exc_info()[1]
        if isinstance(e, GONE):
            log.debug("http %s: viewer went away (%s)", client_address[0], type(e).__name__)
        else:
            log.warning("http %s: request failed: %s: %s", client_address[0], type(e).__name__, e,
                        exc_info=log.isEnabledFor(logging.DEBUG))


class _Handler(BaseHTTPRequestHandler):
    live: LiveServer                 # set on the subclass each server makes
    server_version = "segpipe"
    protocol_version = "HTTP/1.1"
    timeout = 10                     # a viewer that stops reading is dropped after this (socket timeout)

    def do_GET(self):               # noqa: N802 - the standard library's name
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        route = {"/": self._page, "/index.html": self._page, "/stream": self._stream,
                 "/frame.jpg": self._frame, "/stats": self._stats}.get(path)
        if route is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
            return
        route()

    def _send(self, status, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _page(self) -> None:
        self._send(HTTPStatus.OK, self.live.page, "text/html; charset=utf-8")

    def _stats(self) -> None:
        body = json.dumps({**self.live.stats(), "viewers": self.live.hub.viewers}).encode()
        self._send(HTTPStatus.OK, body, "application/json")

    def _frame(self) -> None:
        jpeg = self.live.hub.jpeg
        if jpeg is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"no frame yet\n", "text/plain; charset=utf-8")
        else:
            self._send(HTTPStatus.OK, jpeg, "image/jpeg")

    def _stream(self) -> None:
        hub = self.live.hub
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        with hub.cond:
            hub.viewers += 1
        try:
            self.wfile.write(f"--{BOUNDARY}\r\n".encode())
            seq = 0
            while not hub.closed:
                new, jpeg = hub.wait_newer(seq, 0.5)
                if new == seq or jpeg is None:
                    continue
                seq = new
                # the boundary goes right after the image, so the browser shows it now, not at the next one
                self.wfile.write(b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                                 + jpeg + f"\r\n--{BOUNDARY}\r\n".encode())
                self.wfile.flush()
        except GONE:
            pass
        finally:
            with hub.cond:
                hub.viewers -= 1

    def log_message(self, fmt, *args) -> None:
        log.debug("http %s: " + fmt, self.address_string(), *args)
