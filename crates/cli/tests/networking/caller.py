# A calling service for runnel's networking tests. It makes calls the way ordinary HTTP clients
# do, through the egress proxy announced in HTTP_PROXY, and reports what came back.
import json, os, socket, urllib.error, urllib.parse, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def via_proxy(url):
    # Straight to the egress proxy, as a hostile program would, whatever NO_PROXY says.
    host = urllib.parse.urlparse(url).netloc
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Basic c2VjcmV0\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    status = int(head.split(" ")[1]) if head.startswith("HTTP/") else 0
    rid = next((l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.lower().startswith("x-runnel-request-id:")), None)
    return {"status": status, "body": body, "request_id": rid}


def fetch(url, force_proxy=False):
    if force_proxy:
        return via_proxy(url)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return {"status": r.status, "body": r.read().decode(errors="replace"), "request_id": r.headers.get("X-Runnel-Request-Id")}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read().decode(errors="replace"), "request_id": e.headers.get("X-Runnel-Request-Id")}
    except Exception as e:  # noqa: BLE001 - the test wants to see any failure
        return {"status": 0, "body": repr(e), "request_id": None}


def tunnel(target, inner_host):
    # CONNECT through the proxy, then one HTTP request inside the tunnel.
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = s.recv(4096).decode(errors="replace")
    out = {"connect": head.split("\r\n")[0]}
    if " 200 " in out["connect"]:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {inner_host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        out["inner"] = data.decode(errors="replace").split("\r\n")[0]
    s.close()
    return out


METADATA = "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/"


def metadata(path):
    req = urllib.request.Request(METADATA + path, headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


ID_TOKENS = {}


def invoke(url, kind, audience, cached=False):
    # Calls `url` with a token from the metadata server: an ID token for `audience`, an access
    # token, or none. With `cached`, an ID token fetched before is used again, as client
    # libraries do until it expires.
    headers = {}
    try:
        if kind == "id" and cached and audience in ID_TOKENS:
            headers["Authorization"] = "Bearer " + ID_TOKENS[audience]
        elif kind == "id":
            token = metadata("identity?audience=" + urllib.parse.quote(audience, safe=""))
            ID_TOKENS[audience] = token
            headers["Authorization"] = "Bearer " + token
        elif kind == "access":
            headers["Authorization"] = "Bearer " + json.loads(metadata("token"))["access_token"]
    except urllib.error.HTTPError as e:
        return {"status": 0, "metadata_status": e.code, "body": e.read().decode(errors="replace")}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return {"status": r.status, "body": r.read().decode(errors="replace"), "request_id": r.headers.get("X-Runnel-Request-Id")}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read().decode(errors="replace"), "request_id": e.headers.get("X-Runnel-Request-Id")}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        if "invoke" in q:
            url = q["invoke"][0]
            result = invoke(url, q.get("token", ["id"])[0], q.get("aud", [url])[0], "cache" in q)
        elif "url" in q:
            result = fetch(q["url"][0], "proxy" in q)
        elif "tunnel" in q:
            result = tunnel(q["tunnel"][0], q.get("inner", [q["tunnel"][0].split(":")[0]])[0])
        else:
            result = {
                "service": os.environ.get("K_SERVICE"),
                "xff": self.headers.get("X-Forwarded-For"),
                "host": self.headers.get("Host"),
                "proxy_authorization": self.headers.get("Proxy-Authorization"),
            }
        body = json.dumps(result).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
