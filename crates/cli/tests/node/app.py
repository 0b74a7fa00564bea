"""The workload of runnel's node tests: one small HTTP server whose endpoints exercise what the
platform promises an instance (contract, isolation, crashes, slowness, streaming, logs).

    python3 app.py MARKER [MODE]

MARKER is put in argv so that the tests find this process on the host. MODE is `serve`
(default), `exit` (fails at start), `hang` (never listens) or `stubborn` (ignores SIGTERM).
While a file named `hold` (or `$APP_HOLD`) exists next to this script, the app waits before it
listens: the tests use it to keep a restarting instance from becoming ready, and `APP_HOLD` to
let another revision start meanwhile.
"""

import hashlib
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MARKER = sys.argv[1]
MODE = sys.argv[2] if len(sys.argv) > 2 else "serve"
BOOT = os.urandom(8).hex()
HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20


def say(line):
    print(line, flush=True)


if MODE == "exit":
    say(f"fatal: {MARKER} cannot start: no configuration")
    sys.exit(3)
if MODE == "hang":
    say(f"{MARKER} is thinking about listening")
    while True:
        time.sleep(3600)
if MODE == "stubborn":
    signal.signal(signal.SIGTERM, lambda *_: say(f"{MARKER} ignores SIGTERM"))

while os.path.exists(os.path.join(HERE, os.environ.get("APP_HOLD", "hold"))):
    time.sleep(0.05)

releases = {}
releases_lock = threading.Lock()


def release_event(key):
    with releases_lock:
        return releases.setdefault(key, threading.Event())


def generated(n, seed):
    """n deterministic bytes, in pieces of at most 1 MiB."""
    rng = random.Random(seed)
    while n > 0:
        piece = rng.randbytes(min(n, MIB))
        n -= len(piece)
        yield piece


def check(request):
    """What the instance can see and reach, for the isolation test."""
    procs = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        procs.append({"pid": int(name), "argv": argv})
    ports = {}
    for port in request["ports"]:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            ports[str(port)] = "connected"
        except ConnectionRefusedError:
            ports[str(port)] = "refused"
        except OSError as e:
            ports[str(port)] = f"error: {e}"
    return {
        "env": dict(os.environ),
        "pid": os.getpid(),
        "uid": os.getuid(),
        "procs": procs,
        "ports": ports,
        "paths": {p: look(p) for p in request["paths"]},
    }


def look(path):
    """Whether a path exists, and what a directory lists or a file holds."""
    seen = {"exists": os.path.lexists(path)}
    try:
        if os.path.isdir(path):
            seen["entries"] = sorted(os.listdir(path))
        elif os.path.exists(path):
            with open(path, "rb") as f:
                seen["content"] = f.read(4096).decode(errors="replace")
    except OSError as e:
        seen["error"] = str(e)
    return seen


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are written separately; with Nagle on, each response on a kept-alive
    # connection would wait for the peer's delayed ACK (~40 ms).
    disable_nagle_algorithm = True

    def send_json(self, value, status=200):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def body(self):
        """The request body, piece by piece as it arrives."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, MIB))
                    if not data:
                        raise ConnectionError("the request body ended early")
                    left -= len(data)
                    yield data
                self.rfile.readline()
        left = int(self.headers.get("Content-Length") or 0)
        while left:
            data = self.rfile.read(min(left, MIB))
            if not data:
                raise ConnectionError("the request body ended early")
            left -= len(data)
            yield data

    def do_GET(self):
        self.route()

    def do_POST(self):
        self.route()

    def route(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path == "/":
            self.send_json(
                {
                    "service": os.environ.get("K_SERVICE"),
                    "revision": os.environ.get("K_REVISION"),
                    "configuration": os.environ.get("K_CONFIGURATION"),
                    "port": os.environ.get("PORT"),
                    "version": os.environ.get("APP_VERSION"),
                    "host": self.headers.get("Host"),
                    "forwardedFor": self.headers.get_all("X-Forwarded-For"),
                    "boot": BOOT,
                    "marker": MARKER,
                }
            )
        elif path == "/print":
            say(q["line"])
            self.send_json({"printed": q["line"]})
        elif path == "/crash":
            say(f"{MARKER} crashing on request")
            os._exit(1)
        elif path == "/slow":
            seconds = float(q.get("s", "3"))
            time.sleep(seconds)
            self.send_json({"slept": seconds})
        elif path == "/check":
            request = json.loads(b"".join(self.body()))
            self.send_json(check(request))
        elif path == "/upload":
            n, crc, sha = 0, 0, hashlib.sha256()
            for data in self.body():
                n += len(data)
                crc = zlib.crc32(data, crc)
                sha.update(data)
            self.send_json({"bytes": n, "crc32": crc, "sha256": sha.hexdigest()})
        elif path == "/download":
            n, seed = int(q["n"]), int(q["seed"])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            for piece in generated(n, seed):
                self.wfile.write(piece)
        elif path == "/digest":
            n, crc = 0, 0
            for piece in generated(int(q["n"]), int(q["seed"])):
                n += len(piece)
                crc = zlib.crc32(piece, crc)
            self.send_json({"bytes": n, "crc32": crc})
        elif path == "/sse":
            # The last event is sent only once the client, having read the first, asks for it
            # on another request: a frontend that buffers would never deliver the first.
            released = release_event(q["key"])
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.send_chunk(b"data: first\n\n")
            outcome = b"released" if released.wait(10) else b"not released"
            self.send_chunk(b"data: " + outcome + b"\n\n")
            self.send_chunk(b"")
        elif path == "/release":
            released = release_event(q["key"])
            released.set()
            self.send_json({"released": True})
        else:
            self.send_json({"error": f"no such path {path}"}, status=404)


say(f"{MARKER} started boot={BOOT} revision={os.environ.get('K_REVISION')}")
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), App).serve_forever()
