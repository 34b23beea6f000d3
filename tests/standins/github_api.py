"""A loopback stand-in for the part of the GitHub REST API that mints
installation access tokens, for the integration tests of secret_vault's
minted credentials.

    POST {prefix}/app/installations/{id}/access_tokens
        Authenticated by a GitHub App JWT (RS256), checked as GitHub does:
        signature, algorithm, issuer and the iat/exp window. Answers 201 with
        a new `ghs_...` token, or 401/403/404 with GitHub's JSON error shape.
    POST /_control   {"mode": "ok"|"401"|"404"|"500"|"hang", "ttl": seconds}
    GET  /_stats     what the token route saw and did (JSON)

Prints `ready <port>` once listening. Prints nothing else: the tests search
server logs for token values, so no token may appear in this process's
output either (http.server's request log is off).
"""

import argparse
import base64
import binascii
import datetime
import json
import re
import secrets
import select
import socket
import string
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

DOCS = "https://docs.github.com/rest/apps/apps#create-an-installation-access-token-for-an-app"
BAD_JWT = {"message": "A JSON web token could not be decoded", "documentation_url": DOCS}
NOT_FOUND = {"message": "Not Found", "documentation_url": DOCS}
# GitHub refuses API requests without a User-Agent with 403 and this text.
NO_USER_AGENT = {
    "message": "Request forbidden by administrative rules. "
    "Please make sure your request has a User-Agent header.",
    "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#user-agent-required",
}
SERVER_ERROR = {"message": "Server Error"}
MODES = ("ok", "401", "404", "500", "hang")

# Clock-skew allowance for iat in the future, how old an iat may be, the
# longest lifetime GitHub accepts (10 minutes plus a minute of back-dating),
# and how far in the future exp may lie.
IAT_FUTURE_SKEW = 1
IAT_MAX_AGE = 120
MAX_LIFETIME = 660
EXP_MAX_AHEAD = 600 + 5

B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
ALPHANUMERIC = string.ascii_letters + string.digits


class JwtError(Exception):
    pass


def b64url_decode(part, what):
    """Unpadded base64url, strictly: no '=', no other alphabet, no impossible length."""
    if not B64URL.match(part):
        raise JwtError(f"{what} is not unpadded base64url")
    if len(part) % 4 == 1:
        raise JwtError(f"{what} has an impossible base64 length")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as e:
        raise JwtError(f"{what} does not decode: {e}") from None


def json_object(raw, what):
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise JwtError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise JwtError(f"{what} is not a JSON object")
    return value


def integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


class State:
    """Settings and what the token route has seen; shared by the handler threads."""

    def __init__(self, args, public_key):
        self.lock = threading.Lock()
        self.public_key = public_key
        self.app_id = args.app_id
        self.installation_id = args.installation_id
        self.prefix = args.prefix.rstrip("/")
        self.route = re.compile("^" + re.escape(self.prefix) + r"/app/installations/([^/]+)/access_tokens$")
        self.ttl = args.token_ttl
        self.mode = "ok"
        self.calls = 0
        self.minted = 0
        self.rejected = []
        self.tokens = []
        self.accept_mismatches = 0
        self.api_versions = []
        self.user_agents = []
        self.last_claims = None
        self.last_headers = None
        self.last_body = None

    def stats(self):
        with self.lock:
            return {
                "calls": self.calls,
                "minted": self.minted,
                "rejected": list(self.rejected),
                "tokens": list(self.tokens),
                "last_claims": self.last_claims,
                "last_headers": self.last_headers,
                "last_body": self.last_body,
                "accept_mismatches": self.accept_mismatches,
                "api_versions": list(self.api_versions),
                "user_agents": list(self.user_agents),
                "mode": self.mode,
                "ttl": self.ttl,
            }

    def check_jwt(self, authorization, now):
        """The claims of a valid app JWT; raises JwtError saying what is wrong.
        Records the claims whenever the payload decodes, valid or not."""
        if authorization is None:
            raise JwtError("no Authorization header")
        scheme, _, jwt = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise JwtError(f"Authorization scheme is {scheme!r}, not Bearer")
        jwt = jwt.strip()
        parts = jwt.split(".")
        if len(parts) != 3:
            raise JwtError(f"JWT has {len(parts)} parts, not 3")
        header = json_object(b64url_decode(parts[0], "JWT header"), "JWT header")
        claims = json_object(b64url_decode(parts[1], "JWT payload"), "JWT payload")
        signature = b64url_decode(parts[2], "JWT signature")
        with self.lock:
            self.last_claims = claims
        alg = header.get("alg")
        if alg != "RS256":
            raise JwtError(f"alg is {alg!r}, not RS256")
        if not signature:
            raise JwtError("empty signature")
        signed = f"{parts[0]}.{parts[1]}".encode("ascii")
        try:
            self.public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise JwtError("signature does not verify with the app's public key") from None
        iss = claims.get("iss")
        if integer(iss):
            iss = str(iss)
        if not isinstance(iss, str):
            raise JwtError(f"iss is missing or not a string or integer: {claims.get('iss')!r}")
        if iss != self.app_id:
            raise JwtError(f"iss {iss!r} is not the app id")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not integer(iat):
            raise JwtError(f"iat is not an integer: {iat!r}")
        if not integer(exp):
            raise JwtError(f"exp is not an integer: {exp!r}")
        if iat > now + IAT_FUTURE_SKEW:
            raise JwtError(f"iat {iat} is in the future (now {now})")
        if iat < now - IAT_MAX_AGE:
            raise JwtError(f"iat {iat} is too old (now {now})")
        if exp <= now:
            raise JwtError(f"expired: exp {exp} (now {now})")
        if exp - iat > MAX_LIFETIME:
            raise JwtError(f"lifetime exp - iat = {exp - iat} s is over {MAX_LIFETIME} s")
        if exp > now + EXP_MAX_AHEAD:
            raise JwtError(f"exp {exp} is too far in the future (now {now})")
        return claims


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "GitHub.com"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - http.server's name
        pass

    def log_error(self, format, *args):  # noqa: A002
        pass

    @property
    def state(self):
        return self.server.state

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def answer(self, status, document):
        data = json.dumps(document).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self):
        self.read_body()
        path = self.path.split("?", 1)[0]
        if path == "/_stats":
            self.answer(200, self.state.stats())
        else:
            self.answer(404, NOT_FOUND)

    def do_POST(self):
        body = self.read_body()
        path = self.path.split("?", 1)[0]
        if path == "/_control":
            self.control(body)
            return
        match = self.state.route.match(path)
        if match is None:
            self.answer(404, NOT_FOUND)
            return
        self.access_token(match.group(1), body)

    def control(self, body):
        try:
            order = json.loads(body or b"{}")
            mode = order.get("mode", self.state.mode)
            ttl = order.get("ttl")
            if mode not in MODES:
                raise ValueError(f"mode must be one of {MODES}")
            if ttl is not None and not (integer(ttl) and ttl > 0):
                raise ValueError("ttl must be a positive integer")
        except (ValueError, AttributeError) as e:
            self.answer(400, {"message": f"bad control request: {e}"})
            return
        with self.state.lock:
            self.state.mode = mode
            if ttl is not None:
                self.state.ttl = ttl
            now_set = {"mode": self.state.mode, "ttl": self.state.ttl}
        self.answer(200, now_set)

    def record_headers(self):
        seen = {}
        for name, value in self.headers.items():
            if name.lower() == "authorization":
                # The scheme only: a JWT is a credential too.
                value = value.strip().split(" ", 1)[0] + " [redacted]"
            seen[name.lower()] = value
        return seen

    def reject(self, status, document, reason):
        with self.state.lock:
            self.state.rejected.append(reason)
        self.answer(status, document)

    def access_token(self, installation_id, body):
        state = self.state
        headers = self.record_headers()
        with state.lock:
            state.calls += 1
            state.last_headers = headers
            try:
                state.last_body = json.loads(body) if body else None
            except ValueError:
                state.last_body = body.decode("utf-8", "replace")
            if "application/vnd.github+json" not in (self.headers.get("Accept") or ""):
                state.accept_mismatches += 1
            state.api_versions.append(self.headers.get("X-GitHub-Api-Version"))
            state.user_agents.append(self.headers.get("User-Agent"))
            mode, ttl = state.mode, state.ttl

        if mode == "hang":
            self.hang()
            return
        if mode == "401":
            self.answer(401, BAD_JWT)
            return
        if mode == "404":
            self.answer(404, NOT_FOUND)
            return
        if mode == "500":
            self.answer(500, SERVER_ERROR)
            return

        if not (self.headers.get("User-Agent") or "").strip():
            self.reject(403, NO_USER_AGENT, "user-agent: missing")
            return
        now = int(time.time())
        try:
            state.check_jwt(self.headers.get("Authorization"), now)
        except JwtError as e:
            self.reject(401, BAD_JWT, f"jwt: {e}")
            return
        if installation_id != state.installation_id:
            self.reject(404, NOT_FOUND, f"installation: {installation_id} is not the app's installation")
            return

        token = "ghs_" + "".join(secrets.choice(ALPHANUMERIC) for _ in range(36))
        expires = datetime.datetime.fromtimestamp(now + ttl, datetime.timezone.utc)
        with state.lock:
            state.minted += 1
            state.tokens.append(token)
        self.answer(
            201,
            {
                "token": token,
                "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "permissions": {"contents": "read"},
                "repository_selection": "all",
            },
        )

    def hang(self):
        """Never answer: wait until the client goes away, or 120 s."""
        deadline = time.monotonic() + 120
        conn = self.connection
        while time.monotonic() < deadline:
            readable, _, _ = select.select([conn], [], [], 0.2)
            if readable:
                try:
                    if not conn.recv(1, socket.MSG_PEEK):
                        break
                except OSError:
                    break
                # Bytes of a pipelined request: keep them unread, keep hanging.
                time.sleep(0.2)
        self.close_connection = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--public-key", required=True, help="PEM public key of the GitHub App")
    parser.add_argument("--app-id", required=True, help="expected iss (app id or client id)")
    parser.add_argument("--installation-id", required=True)
    parser.add_argument("--token-ttl", type=int, default=3600)
    parser.add_argument("--prefix", default="", help="path prefix, /api/v3 for GitHub Enterprise Server")
    args = parser.parse_args()

    with open(args.public_key, "rb") as f:
        public_key = serialization.load_pem_public_key(f.read())
    if not isinstance(public_key, rsa.RSAPublicKey):
        sys.exit("--public-key is not an RSA public key")

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.state = State(args, public_key)
    print(f"ready {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
