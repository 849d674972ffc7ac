#!/usr/bin/env python3
"""A stand-in MMDS for tests: IMDSv2-style tokens over HTTP/1.1 keep-alive, served by Linux's TCP.

    mmds-server.py ADDRESS PORT

PUT /latest/api/token with X-metadata-token-ttl-seconds (1..21600) answers 200 with a fresh
token; without it, 400. GET /latest/... answers only with a valid X-metadata-token (else 401):
with `Accept: application/json`, the JSON of the value at that path; otherwise IMDS text (a
string as is, a directory as its keys one per line, sub-directories ending in '/').

Every response carries Content-Length and the connection stays open. Each response is written in
three pieces (status line, remaining headers, body) with TCP_NODELAY and a short pause between
them, so the client has to put a response together from several TCP segments.

Prints "listening" on stdout once the socket is bound, then one JSON line per request:
{"method", "path", "client_port", "token", "accept", "status"}.
"""
import json
import secrets
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

METADATA = {
    "latest": {
        "meta-data": {
            "ami-id": "ami-0a1b2c3d4e5f60718",
            "instance-id": "i-0fc0run0probe0001",
            "local-ipv4": "10.201.0.2",
            "placement": {"availability-zone": "us-east-1a"},
        }
    }
}
TOKENS = set()


def lookup(path):
    node = METADATA
    for part in [p for p in path.split("/") if p]:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def as_text(value):
    if isinstance(value, dict):
        return "\n".join(k + "/" if isinstance(v, dict) else k for k, v in value.items())
    return str(value)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says otherwise

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # the JSON lines are the log
        pass

    def answer(self, status, body, token_state):
        payload = body.encode()
        head = f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
        rest = f"Content-Type: text/plain\r\nContent-Length: {len(payload)}\r\n\r\n"
        for piece in (head.encode(), rest.encode(), payload):
            if piece:
                self.wfile.write(piece)
                self.wfile.flush()
                time.sleep(0.02)
        print(json.dumps({
            "method": self.command,
            "path": self.path,
            "client_port": self.client_address[1],
            "token": token_state,
            "accept": self.headers.get("Accept"),
            "status": status,
        }), flush=True)

    def do_PUT(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        ttl = self.headers.get("X-metadata-token-ttl-seconds")
        if self.path != "/latest/api/token":
            return self.answer(404, "Not Found", "none")
        if ttl is None or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return self.answer(400, "X-metadata-token-ttl-seconds must be 1..21600", "none")
        token = secrets.token_urlsafe(32)
        TOKENS.add(token)
        self.answer(200, token, "issued")

    def do_GET(self):
        token = self.headers.get("X-metadata-token")
        if token is None:
            return self.answer(401, "Unauthorized", "missing")
        if token not in TOKENS:
            return self.answer(401, "Unauthorized", "invalid")
        value = lookup(self.path)
        if value is None:
            return self.answer(404, "Not Found", "valid")
        if self.headers.get("Accept") == "application/json":
            return self.answer(200, json.dumps(value), "valid")
        self.answer(200, as_text(value), "valid")


def main():
    address, port = sys.argv[1], int(sys.argv[2])
    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
