#!/usr/bin/env python3
"""A webhook receiver for the alert-webhook test: HTTPS (or HTTP with --plain), verifies
X-Moat-Signature (t=<ms>,v1=<hex HMAC-SHA256 over "<t>.<body>">) with the shared secret, and
prints one JSON line per request: {"verified": bool, "tampered_verified": bool, "age_ms": n,
"body": {...}}. Prints "PORT <n>" first; exits after --count requests or --timeout seconds.
"""

import argparse
import hashlib
import hmac
import http.server
import json
import ssl
import sys
import threading
import time


def verify(secret: bytes, header: str, body: bytes) -> bool:
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        mac = hmac.new(secret, parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(mac, parts["v1"])
    except Exception:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()
    secret = open(args.secret_file, "rb").read().strip()
    seen = []
    done = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(n)
            header = self.headers.get("x-moat-signature", "")
            t = int(dict(p.split("=", 1) for p in header.split(",")).get("t", "0")) if "t=" in header else 0
            tampered = body[:-1] + bytes([body[-1] ^ 1]) if body else b"x"
            line = {
                "path": self.path,
                "verified": verify(secret, header, body),
                "tampered_verified": verify(secret, header, tampered),
                "age_ms": int(time.time() * 1000) - t,
                "body": json.loads(body or b"null"),
            }
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()
            print(json.dumps(line), flush=True)
            seen.append(line)
            if len(seen) >= args.count:
                done.set()

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    if not args.plain:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"PORT {server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    done.wait(args.timeout)
    sys.exit(0 if done.is_set() else 1)


if __name__ == "__main__":
    main()
