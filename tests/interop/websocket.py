#!/usr/bin/env python3
"""MQTT over secure WebSocket (path /mqtt, subprotocol "mqtt") with the same TLS and identity rules.

Moat issue 2, point 7; MQTT 5.0 section 6 (WebSocket transport: binary frames, subprotocol
"mqtt"). paho-mqtt offers Sec-WebSocket-Protocol: mqtt and uses binary frames.

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py, `protocol websockets`
listener with the same TLS/ACL settings): passes.
"""

import socket
import ssl

from mqtt_interop import PahoClient, check, run, step, unique


def upgrade(args, device, path, protocol):
    """A hand-made WebSocket upgrade over mutual TLS; returns (status, lower-cased headers)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.cafile)
    ctx.load_cert_chain(f"{args.certdir}/{device}.crt", f"{args.certdir}/{device}.key")
    with socket.create_connection((args.host, args.wss_port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname=args.host) as t:
            t.sendall(f"GET {path} HTTP/1.1\r\nHost: {args.host}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = t.recv(4096)
                if not chunk:
                    break
                data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    check(bool(head) and head[0].startswith("HTTP/1.1 "), f"not an HTTP answer: {data[:200]!r}")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


def main(args):
    if args.wss_port is None:
        raise SystemExit("websocket.py needs --wss-port")
    dev = args.device_ids[0]
    base = f"devices/{dev}/{unique('wss')}"
    for version in (5, 4):
        step(f"v{version}: device over WSS publishes and receives in its namespace")
        c = PahoClient(args, transport="wss", device=dev, protocol=version)
        c.connect()
        c.subscribe(f"{base}/#", qos=1)
        c.publish(f"{base}/self", b"over websocket", qos=1)
        m = c.expect_message(f"{base}/self")
        check(m.payload == b"over websocket", f"payload {m.payload!r}")
        step(f"v{version}: messages cross between the TLS/plain listeners and WSS")
        other = PahoClient(args, transport="plain", protocol=version)
        other.connect()
        other.subscribe(f"{base}/to-plain", qos=1)
        other.publish(f"{base}/to-wss", b"x" * 70000, qos=1)  # spans several WebSocket frames/records
        m = c.expect_message(f"{base}/to-wss")
        check(m.payload == b"x" * 70000, f"large payload over WSS arrived as {len(m.payload)} bytes")
        c.publish(f"{base}/to-plain", b"from wss", qos=1)
        other.expect_message(f"{base}/to-plain")
        other.disconnect()
        c.disconnect()

    step("v5: foreign namespace denied over WSS as well")
    c = PahoClient(args, transport="wss", device=dev)
    c.connect()
    c.publish(f"devices/{args.device_ids[1]}/x", b"nope", qos=1, expect_rc=0x87)
    c.disconnect()

    step("the upgrade answer selects subprotocol mqtt (MQTT 5.0 6.0: MQTT-6.0.0-3/-4)")
    status, headers = upgrade(args, dev, "/mqtt", "mqtt")
    check(status == 101, f"WSS upgrade on /mqtt answered {status}")
    check(headers.get("sec-websocket-protocol") == "mqtt",
          f"Sec-WebSocket-Protocol in the answer: {headers.get('sec-websocket-protocol')!r}, expected 'mqtt'")

    step("WSS without a client certificate is refused at the TLS handshake")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.cafile)
    refused = False
    try:
        with socket.create_connection((args.host, args.wss_port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname=args.host) as t:
                # TLS 1.3: the server's verdict on the (missing) certificate arrives after the
                # client's handshake completes, so use the connection to see it.
                t.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                          b"Sec-WebSocket-Protocol: mqtt\r\n\r\n")
                refused = t.recv(100) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        refused = True
    check(refused, "WSS upgrade answered without a client certificate")


if __name__ == "__main__":
    run(main, __doc__)
