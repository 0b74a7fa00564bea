"""A receiving service that verifies its callers' ID tokens itself.

Deployed with the invoker check off (`--no-invoker-iam-check`), runnel's frontend lets every
request through with its `Authorization` header untouched, and this service decides: it verifies
the bearer token with google-auth's `verify_token` against runnel's published keys, for its own
URL as the audience, and answers 200 with the verified email, or 401 with why not.

Google's ready-made verifiers (`verify_oauth2_token`, ...) accept Google's issuers only, so the
generic `verify_token` is given runnel's certificates URL (`CERTS_URL`, the issuer's
`/oauth2/v1/certs`) and the audience (`AUDIENCE`, this service's URL).

runnel's issuer is its API, on the host's loopback. Inside an instance loopback is the instance's
own, and the platform's NO_PROXY keeps loopback away from the egress proxy, so the keys are
fetched through the egress proxy explicitly (a session that ignores NO_PROXY); the proxy answers
exactly the publication paths itself and refuses everything else on runnel's listeners.
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.id_token
import requests

AUDIENCE = os.environ["AUDIENCE"]
CERTS_URL = os.environ["CERTS_URL"]


def keys_request():
    session = requests.Session()
    session.trust_env = False
    proxy = os.environ.get("HTTP_PROXY")
    if proxy:
        session.proxies = {"http": proxy, "https": os.environ.get("HTTPS_PROXY", proxy)}
    return google.auth.transport.requests.Request(session=session)


REQUEST = keys_request()


def verified_caller(authorization):
    """The verified claims of the bearer token in `authorization`, or (None, why not)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None, "no bearer token: send Authorization: Bearer <an ID token for this service's URL>"
    try:
        return google.oauth2.id_token.verify_token(token.strip(), REQUEST, audience=AUDIENCE, certs_url=CERTS_URL), None
    except google.auth.exceptions.TransportError as e:
        # The keys could not be had: not the caller's fault.
        raise RuntimeError(f"cannot fetch the keys from {CERTS_URL}: {e}") from e
    except (ValueError, google.auth.exceptions.GoogleAuthError) as e:
        return None, f"the token does not verify: {e}"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            claims, why_not = verified_caller(self.headers.get("Authorization"))
        except RuntimeError as e:
            self.answer(503, {"error": str(e)})
            return
        if claims is None:
            self.answer(401, {"error": why_not}, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return
        self.answer(200, {"service": os.environ.get("K_SERVICE"), "email": claims.get("email"), "sub": claims.get("sub")})

    def answer(self, status, document, headers=None):
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
