"""The calling service of the guide, as a runnel service.

`guide.py` is the guide's code exactly as published (its `make_internal_request` fetches an ID
token with google-auth and calls RECEIVING_SERVICE_URL with requests). This wrapper only makes it
a service: every request to it runs `make_internal_request()` once and returns what it got, or
502 when it got nothing.
"""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import guide


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        answer = guide.make_internal_request()
        body = (answer if answer is not None else "the internal request failed; see the logs\n").encode()
        self.send_response(200 if answer is not None else 502)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
