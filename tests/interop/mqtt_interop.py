"""Shared plumbing for the interop scripts in this folder (not a test itself).

Every script in tests/interop/ is run on its own (`python3 tests/interop/NAME.py --help`);
Python puts the script's folder on sys.path, so `import mqtt_interop` works from anywhere.

What this module gives a script:
- `run(main)`: parses the common command line, runs `main(args)` under a global watchdog,
  prints `PASS`/`FAIL: why` and exits 0 / 1 (3 when the watchdog fires).
- `PahoClient`: a paho-mqtt 2.x client whose every wait (CONNACK, SUBACK, PUBACK, message,
  disconnect) is bounded by a timeout and ends in `Failure` with a clear message.
- `RawClient`: a minimal MQTT 3.1.1/5.0 client over a plain or TLS socket, for what paho
  hides: not acknowledging a message, dropping the TCP connection without DISCONNECT,
  reading DUP flags, topic aliases sent by the server, exact reason codes.

The hub under test is reached through the common arguments:
  --host H --tls-port P      mutual-TLS MQTT listener (client certificate required)
  --plain-port P             plaintext listener that accepts anonymous clients, unrestricted
  --wss-port P               MQTT over secure WebSocket (path /mqtt), optional
  --cafile F --certdir D     root CA of the server certificate; D holds ID.crt / ID.key for
                             each device id in --devices (default dev1,dev2,dev3)

Identity rule assumed for devices on the TLS listener: client id = device id, and a device
publishes/subscribes only under devices/{id}/#. Scenarios that need several clients on one
topic put the device on TLS and its peers on the anonymous plaintext listener.
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import ssl
import struct
import sys
import threading
import time
import traceback
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

__all__ = [
    "Failure", "run", "check", "PahoClient", "RawClient", "Properties", "PacketTypes",
    "SubscribeOptions", "props", "unique", "TIMEOUT", "QUIET", "step", "known_deviation",
]

# Upper bound of any single wait for something that should happen.
TIMEOUT = 20.0
# How long we listen to conclude that something does NOT happen.
QUIET = 1.0
# Upper bound of a whole script run.
WATCHDOG_SECS = 150.0

MQTTv311 = mqtt.MQTTv311
MQTTv5 = mqtt.MQTTv5


class Failure(Exception):
    """The hub did something the standard (or Moat's contract) forbids."""


def check(cond: bool, message: str) -> None:
    if not cond:
        raise Failure(message)


def unique(prefix: str = "t") -> str:
    """A topic level no other run has used, so retained messages from earlier runs never leak in."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def props(packet_type: int, **values) -> Properties:
    """paho Properties from keyword arguments, e.g. props(PacketTypes.PUBLISH, MessageExpiryInterval=5)."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


# ---------------------------------------------------------------------------------------------
# Command line and outcome


def parse_args(description: str, argv=None, extra_args=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    if extra_args is not None:
        extra_args(ap)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--tls-port", type=int, required=True)
    ap.add_argument("--plain-port", type=int, default=None,
                    help="plaintext listener accepting anonymous clients")
    ap.add_argument("--wss-port", type=int, default=None)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--certdir", required=True)
    ap.add_argument("--devices", default="dev1,dev2,dev3")
    ap.add_argument("--max-keepalive", type=int, default=None,
                    help="the hub's configured maximum keep alive, if the script checks it")
    ap.add_argument("--reference", choices=["mosquitto"], default=None,
                    help="the server is a reference broker, not Moat: skip the steps marked "
                         "with known_deviation() (Moat promises more than the standard "
                         "requires, or the reference deviates from the standard)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    args.device_ids = [d for d in args.devices.split(",") if d]
    return args


def run(main, description: str, extra_args=None) -> None:
    """Parse arguments (the common ones, plus what `extra_args(parser)` adds), run
    main(args), print the verdict and exit."""
    args = parse_args(description, extra_args=extra_args)
    name = os.path.basename(sys.argv[0])

    def watchdog():
        print(f"FAIL: {name}: watchdog: script still running after {WATCHDOG_SECS}s", flush=True)
        os._exit(3)

    timer = threading.Timer(WATCHDOG_SECS, watchdog)
    timer.daemon = True
    timer.start()
    try:
        main(args)
    except Failure as e:
        print(f"FAIL: {name}: {e}", flush=True)
        if args.verbose:
            traceback.print_exc()
        os._exit(1)
    except Exception as e:  # a crash of the script itself, still a failure
        traceback.print_exc()
        print(f"FAIL: {name}: unexpected {type(e).__name__}: {e}", flush=True)
        os._exit(1)
    print(f"PASS: {name}", flush=True)
    # os._exit: paho network threads must not keep a passing run alive.
    os._exit(0)


def step(message: str) -> None:
    print(f"  - {message}", flush=True)


def known_deviation(args, why: str) -> bool:
    """True (skip the step) when running against a reference broker that is known not to do
    what the step checks; the reason is printed so the skip is visible in the log."""
    if args.reference is None:
        return False
    step(f"SKIPPED on {args.reference}: {why}")
    return True


# ---------------------------------------------------------------------------------------------
# paho-mqtt wrapper


class PahoClient:
    """A paho-mqtt 2.x client with bounded waits.

    transport: "tls" (device certificate, needs device=), "plain" (anonymous) or "wss".
    """

    def __init__(self, args, *, transport="tls", device=None, client_id=None, protocol=5,
                 manual_ack=False, tls_version=None, clean_session=None):
        self.args = args
        self.transport = transport
        self.protocol = MQTTv5 if protocol == 5 else MQTTv311
        if client_id is None:
            client_id = device if device is not None else unique("anon")
        self.client_id = client_id
        self.device = device
        self.label = f"{client_id}@{transport}/v{protocol}"
        self.c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=self.protocol,
            clean_session=clean_session if protocol != 5 else None,
            transport="websockets" if transport == "wss" else "tcp",
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        if transport in ("tls", "wss"):
            if device is None:
                raise ValueError("tls/wss needs a device certificate")
            certfile = os.path.join(args.certdir, f"{device}.crt")
            keyfile = os.path.join(args.certdir, f"{device}.key")
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.cafile)
            ctx.load_cert_chain(certfile, keyfile)
            if tls_version is not None:
                ctx.minimum_version = tls_version
                ctx.maximum_version = tls_version
            self.c.tls_set_context(ctx)
        if transport == "wss":
            self.c.ws_set_options(path="/mqtt")
        self.messages: queue.Queue = queue.Queue()
        self.connacks: queue.Queue = queue.Queue()
        self.subacks: dict = {}
        self.unsubacks: dict = {}
        self.pubacks: dict = {}
        self.disconnects: queue.Queue = queue.Queue()
        self._cv = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = self._on_disconnect
        if args.verbose:
            self.c.on_log = lambda c, u, lvl, s: print(f"    [{self.label}] {s}", flush=True)
        self.connack = None

    # -- callbacks (paho network thread)
    def _on_connect(self, c, u, flags, rc, properties):
        self.connacks.put((flags, rc, properties))

    def _on_message(self, c, u, msg):
        self.messages.put(msg)

    def _on_subscribe(self, c, u, mid, rcs, properties):
        with self._cv:
            self.subacks[mid] = rcs
            self._cv.notify_all()

    def _on_unsubscribe(self, c, u, mid, rcs, properties):
        with self._cv:
            self.unsubacks[mid] = rcs
            self._cv.notify_all()

    def _on_publish(self, c, u, mid, rc, properties):
        with self._cv:
            self.pubacks[mid] = rc
            self._cv.notify_all()

    def _on_disconnect(self, c, u, flags, rc, properties):
        self.disconnects.put((rc, properties))

    def _wait_in(self, table, mid, what):
        deadline = time.monotonic() + TIMEOUT
        with self._cv:
            while mid not in table:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failure(f"{self.label}: no {what} for packet id {mid} within {TIMEOUT}s")
                self._cv.wait(left)
            return table.pop(mid)

    # -- operations
    def connect(self, *, clean_start=True, session_expiry=None, keepalive=60, properties=None,
                will=None, expect_rc=0, port=None, bind_address=""):
        """Connect and wait for CONNACK. Returns (flags, reason_code, properties).

        v5: clean_start / session_expiry here; v3.1.1: clean_session in the constructor."""
        if will is not None:
            topic, payload, qos, retain, wprops = will
            self.c.will_set(topic, payload, qos=qos, retain=retain, properties=wprops)
        if self.protocol == MQTTv5:
            if properties is None:
                properties = Properties(PacketTypes.CONNECT)
            if session_expiry is not None:
                properties.SessionExpiryInterval = session_expiry
        if port is None:
            port = {"tls": self.args.tls_port, "plain": self.args.plain_port,
                    "wss": self.args.wss_port}[self.transport]
            if port is None:
                raise Failure(f"{self.label}: this script needs --{self.transport}-port")
        kwargs = {}
        if self.protocol == MQTTv5:
            kwargs = dict(clean_start=clean_start, properties=properties)
        try:
            self.c.connect(self.args.host, port, keepalive=keepalive, bind_address=bind_address,
                           **kwargs)
        except (OSError, ssl.SSLError) as e:
            raise Failure(f"{self.label}: connect to {self.args.host}:{port} failed: {e!r}")
        self.c.loop_start()
        try:
            flags, rc, cprops = self.connacks.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"{self.label}: no CONNACK within {TIMEOUT}s")
        self.connack = (flags, rc, cprops)
        if expect_rc is not None:
            check(rc.value == expect_rc,
                  f"{self.label}: CONNACK reason {rc} ({rc.value:#04x}), expected {expect_rc:#04x}")
        return flags, rc, cprops

    def session_present(self) -> bool:
        return bool(self.connack[0].session_present)

    def connack_props(self) -> Properties:
        return self.connack[2]

    def subscribe(self, topics, qos=1, properties=None, expect=None):
        """Subscribe and wait for SUBACK; returns the list of reason code values.

        topics: a filter string, or a list of (filter, qos-or-SubscribeOptions)."""
        if isinstance(topics, str):
            opts = qos if isinstance(qos, SubscribeOptions) or self.protocol == MQTTv311 \
                else SubscribeOptions(qos=qos)
            topics = [(topics, opts)]
        rc, mid = self.c.subscribe(topics, properties=properties)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"{self.label}: subscribe not sent: {rc}")
        rcs = self._wait_in(self.subacks, mid, "SUBACK")
        values = [r.value if hasattr(r, "value") else int(r) for r in rcs]
        if expect is not None:
            check(values == list(expect),
                  f"{self.label}: SUBACK {[hex(v) for v in values]}, expected {[hex(v) for v in expect]}")
        return values

    def unsubscribe(self, topic):
        rc, mid = self.c.unsubscribe(topic)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"{self.label}: unsubscribe not sent: {rc}")
        return self._wait_in(self.unsubacks, mid, "UNSUBACK")

    def publish(self, topic, payload=b"", qos=0, retain=False, properties=None, expect_rc="ok"):
        """Publish; for QoS 1/2 wait for the flow to complete and return its reason code value.

        expect_rc "ok": any success code (0x00, or 0x10 No matching subscribers, MQTT 5.0
        3.4.2.1); an int: exactly that; None: anything."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        check(info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self.label}: publish to {topic!r} not sent: {info.rc}")
        if qos == 0:
            return None
        rc = self._wait_in(self.pubacks, info.mid, "PUBACK/PUBCOMP")
        value = rc.value if hasattr(rc, "value") else int(rc)
        if expect_rc == "ok":
            check(value < 0x80, f"{self.label}: QoS {qos} publish to {topic!r} refused: reason {value:#04x}")
        elif expect_rc is not None:
            check(value == expect_rc,
                  f"{self.label}: QoS {qos} publish to {topic!r}: reason {value:#04x}, expected {expect_rc:#04x}")
        return value

    def expect_message(self, topic=None, timeout=TIMEOUT, what=""):
        """Next message (optionally: next message on `topic`, failing on any other)."""
        try:
            msg = self.messages.get(timeout=timeout)
        except queue.Empty:
            raise Failure(f"{self.label}: expected a message{' on ' + topic if topic else ''}"
                          f"{' (' + what + ')' if what else ''} within {timeout}s, got none")
        if topic is not None:
            check(msg.topic == topic,
                  f"{self.label}: expected a message on {topic!r}, got one on {msg.topic!r} "
                  f"payload {msg.payload!r}")
        return msg

    def expect_no_message(self, within=QUIET, what=""):
        try:
            msg = self.messages.get(timeout=within)
        except queue.Empty:
            return
        raise Failure(f"{self.label}: expected no message{' (' + what + ')' if what else ''}, "
                      f"got {msg.topic!r} payload {msg.payload!r} retain={msg.retain}")

    def collect(self, count, timeout=TIMEOUT):
        """Exactly `count` messages, each within the timeout."""
        return [self.expect_message(timeout=timeout, what=f"{i + 1} of {count}") for i in range(count)]

    def ack(self, msg):
        self.c.ack(msg.mid, msg.qos)

    def disconnect(self, reason_code=None, properties=None):
        if reason_code is not None:
            from paho.mqtt.reasoncodes import ReasonCode
            rc = ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code)
            self.c.disconnect(reasoncode=rc, properties=properties)
        else:
            self.c.disconnect(properties=properties)
        self.c.loop_stop()

    def expect_disconnected(self, timeout=TIMEOUT):
        """Wait until the connection ends; returns the reason code value (None if the server
        closed the network connection without a DISCONNECT packet)."""
        try:
            rc, _ = self.disconnects.get(timeout=timeout)
        except queue.Empty:
            raise Failure(f"{self.label}: expected the server to end the connection within {timeout}s")
        return rc

    def stop(self):
        try:
            self.c.loop_stop()
        except Exception:
            pass
        try:
            if self.c.socket() is not None:
                self.c.socket().close()
        except Exception:
            pass


# ---------------------------------------------------------------------------------------------
# Raw MQTT client

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)
PACKET_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
                7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
                12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH"}

# MQTT 5.0 section 2.2.2.2: property identifier -> (name, type)
PROPS = {
    0x01: ("PayloadFormatIndicator", "byte"), 0x02: ("MessageExpiryInterval", "u32"),
    0x03: ("ContentType", "str"), 0x08: ("ResponseTopic", "str"),
    0x09: ("CorrelationData", "bin"), 0x0B: ("SubscriptionIdentifier", "varint"),
    0x11: ("SessionExpiryInterval", "u32"), 0x12: ("AssignedClientIdentifier", "str"),
    0x13: ("ServerKeepAlive", "u16"), 0x15: ("AuthenticationMethod", "str"),
    0x16: ("AuthenticationData", "bin"), 0x17: ("RequestProblemInformation", "byte"),
    0x18: ("WillDelayInterval", "u32"), 0x19: ("RequestResponseInformation", "byte"),
    0x1A: ("ResponseInformation", "str"), 0x1C: ("ServerReference", "str"),
    0x1F: ("ReasonString", "str"), 0x21: ("ReceiveMaximum", "u16"),
    0x22: ("TopicAliasMaximum", "u16"), 0x23: ("TopicAlias", "u16"),
    0x24: ("MaximumQoS", "byte"), 0x25: ("RetainAvailable", "byte"),
    0x26: ("UserProperty", "pair"), 0x27: ("MaximumPacketSize", "u32"),
    0x28: ("WildcardSubscriptionAvailable", "byte"),
    0x29: ("SubscriptionIdentifierAvailable", "byte"),
    0x2A: ("SharedSubscriptionAvailable", "byte"),
}
PROP_IDS = {name: (pid, kind) for pid, (name, kind) in PROPS.items()}
REPEATABLE = {"UserProperty", "SubscriptionIdentifier"}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mstr(s) -> bytes:
    b = s.encode() if isinstance(s, str) else bytes(s)
    return struct.pack("!H", len(b)) + b


def encode_props(items) -> bytes:
    """items: list of (name, value) pairs (a name may repeat); returns length-prefixed block."""
    body = bytearray()
    for name, value in items:
        pid, kind = PROP_IDS[name]
        body += varint(pid)
        if kind == "byte":
            body += bytes([value])
        elif kind == "u16":
            body += struct.pack("!H", value)
        elif kind == "u32":
            body += struct.pack("!I", value)
        elif kind == "varint":
            body += varint(value)
        elif kind in ("str", "bin"):
            body += mstr(value)
        elif kind == "pair":
            body += mstr(value[0]) + mstr(value[1])
    return varint(len(body)) + bytes(body)


def decode_varint(buf: bytes, pos: int):
    mult, value = 1, 0
    for _ in range(4):
        b = buf[pos]
        pos += 1
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, pos
        mult *= 128
    raise Failure("malformed variable byte integer from the server")


def decode_props(buf: bytes, pos: int):
    """Returns (dict name -> value or list for repeatable properties, new position)."""
    length, pos = decode_varint(buf, pos)
    end = pos + length
    out: dict = {}
    while pos < end:
        pid, pos = decode_varint(buf, pos)
        if pid not in PROPS:
            raise Failure(f"unknown property id {pid:#x} from the server")
        name, kind = PROPS[pid]
        if kind == "byte":
            value = buf[pos]; pos += 1
        elif kind == "u16":
            value = struct.unpack_from("!H", buf, pos)[0]; pos += 2
        elif kind == "u32":
            value = struct.unpack_from("!I", buf, pos)[0]; pos += 4
        elif kind == "varint":
            value, pos = decode_varint(buf, pos)
        elif kind in ("str", "bin"):
            n = struct.unpack_from("!H", buf, pos)[0]
            value = bytes(buf[pos + 2:pos + 2 + n]); pos += 2 + n
            if kind == "str":
                value = value.decode()
        else:
            n = struct.unpack_from("!H", buf, pos)[0]
            k = bytes(buf[pos + 2:pos + 2 + n]).decode(); pos += 2 + n
            n = struct.unpack_from("!H", buf, pos)[0]
            v = bytes(buf[pos + 2:pos + 2 + n]).decode(); pos += 2 + n
            value = (k, v)
        if name in REPEATABLE:
            out.setdefault(name, []).append(value)
        elif name in out:
            raise Failure(f"property {name} appears twice (MQTT 5.0 2.2.2.2 forbids it)")
        else:
            out[name] = value
    return out, end


class Packet:
    def __init__(self, ptype, flags, body):
        self.type, self.flags, self.body = ptype, flags, body

    @property
    def name(self):
        return PACKET_NAMES.get(self.type, f"type{self.type}")

    def __repr__(self):
        return f"<{self.name} flags={self.flags:#x} body={self.body.hex()}>"


class Publish:
    """A decoded PUBLISH (MQTT 5.0 3.3 / 3.1.1 3.3)."""

    def __init__(self, pkt: Packet, version: int):
        self.dup = bool(pkt.flags & 0x08)
        self.qos = (pkt.flags >> 1) & 0x03
        self.retain = bool(pkt.flags & 0x01)
        b = pkt.body
        n = struct.unpack_from("!H", b, 0)[0]
        self.topic = bytes(b[2:2 + n]).decode()
        pos = 2 + n
        self.packet_id = None
        if self.qos:
            self.packet_id = struct.unpack_from("!H", b, pos)[0]
            pos += 2
        self.props = {}
        if version == 5:
            self.props, pos = decode_props(b, pos)
        self.payload = bytes(b[pos:])

    def __repr__(self):
        return (f"<PUBLISH {self.topic!r} qos={self.qos} dup={self.dup} retain={self.retain} "
                f"id={self.packet_id} props={self.props} payload={self.payload!r}>")


class RawClient:
    """A minimal blocking MQTT client for exact wire behaviour. One connection per object."""

    def __init__(self, args, *, transport="tls", device=None, version=5, label=None):
        self.args = args
        self.version = version
        self.label = label or f"raw:{device or 'anon'}@{transport}/v{version}"
        port = args.tls_port if transport == "tls" else args.plain_port
        if port is None:
            raise Failure(f"{self.label}: this script needs --{transport}-port")
        try:
            sock = socket.create_connection((args.host, port), timeout=TIMEOUT)
        except OSError as e:
            raise Failure(f"{self.label}: TCP connect to {args.host}:{port} failed: {e!r}")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if transport == "tls":
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.cafile)
            ctx.load_cert_chain(os.path.join(args.certdir, f"{device}.crt"),
                                os.path.join(args.certdir, f"{device}.key"))
            try:
                sock = ctx.wrap_socket(sock, server_hostname=args.host)
            except (OSError, ssl.SSLError) as e:
                raise Failure(f"{self.label}: TLS handshake failed: {e!r}")
        self.sock = sock
        self.buf = bytearray()
        self.next_id = 1

    # -- framing
    def send(self, data: bytes):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise Failure(f"{self.label}: send failed: {e!r}")

    def send_packet(self, ptype: int, flags: int, body: bytes):
        self.send(bytes([(ptype << 4) | flags]) + varint(len(body)) + body)

    def _fill(self, deadline) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionResetError, ssl.SSLError, OSError):
            chunk = b""
        if not chunk:
            raise EOFError
        self.buf += chunk
        return True

    def read_packet(self, timeout=TIMEOUT):
        """Next packet, or None on timeout. Raises EOFError if the server closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                try:
                    length, pos = decode_varint(self.buf, 1)
                except IndexError:
                    length = None
                if length is not None and len(self.buf) >= pos + length:
                    first = self.buf[0]
                    body = bytes(self.buf[pos:pos + length])
                    del self.buf[:pos + length]
                    return Packet(first >> 4, first & 0x0F, body)
            if not self._fill(deadline):
                return None

    def expect(self, ptype: int, timeout=TIMEOUT, skip=()):
        """The next packet must be of type ptype (packet types in `skip` are passed over)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                pkt = self.read_packet(max(0.0, deadline - time.monotonic()))
            except EOFError:
                raise Failure(f"{self.label}: connection closed while waiting for {PACKET_NAMES[ptype]}")
            if pkt is None:
                raise Failure(f"{self.label}: no {PACKET_NAMES[ptype]} within {timeout}s")
            if pkt.type in skip:
                continue
            check(pkt.type == ptype, f"{self.label}: expected {PACKET_NAMES[ptype]}, got {pkt!r}")
            return pkt

    def expect_publish(self, timeout=TIMEOUT) -> Publish:
        return Publish(self.expect(PUBLISH, timeout), self.version)

    def expect_nothing(self, within=QUIET):
        try:
            pkt = self.read_packet(within)
        except EOFError:
            raise Failure(f"{self.label}: connection closed unexpectedly")
        check(pkt is None, f"{self.label}: expected silence, got {pkt!r}")

    def expect_closed(self, timeout=TIMEOUT):
        """The server must close the connection, optionally after a DISCONNECT.
        Returns the DISCONNECT reason code, or None if it just closed."""
        deadline = time.monotonic() + timeout
        reason = None
        while True:
            try:
                pkt = self.read_packet(max(0.0, deadline - time.monotonic()))
            except EOFError:
                return reason
            if pkt is None:
                raise Failure(f"{self.label}: connection still open after {timeout}s")
            if pkt.type == DISCONNECT:
                reason = pkt.body[0] if pkt.body else 0

    def close(self):
        """Drop the network connection without DISCONNECT (an 'ungraceful' close)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    # -- packets
    def connect(self, client_id, *, clean_start=True, keepalive=60, properties=(), will=None,
                expect_reason=0):
        """CONNECT and read CONNACK; returns (session_present, reason, props).

        will: (topic, payload, qos, retain, will_properties list)."""
        flags = 0x02 if clean_start else 0
        payload = mstr(client_id)
        if will is not None:
            wtopic, wpayload, wqos, wretain, wprops = will
            flags |= 0x04 | (wqos << 3) | (0x20 if wretain else 0)
            if self.version == 5:
                payload += encode_props(wprops)
            payload += mstr(wtopic) + mstr(wpayload)
        level = 5 if self.version == 5 else 4
        body = mstr("MQTT") + bytes([level, flags]) + struct.pack("!H", keepalive)
        if self.version == 5:
            body += encode_props(properties)
        self.send_packet(CONNECT, 0, body + payload)
        pkt = self.expect(CONNACK)
        session_present = bool(pkt.body[0] & 1)
        reason = pkt.body[1]
        cprops = decode_props(pkt.body, 2)[0] if self.version == 5 else {}
        if expect_reason is not None:
            check(reason == expect_reason,
                  f"{self.label}: CONNACK reason {reason:#04x}, expected {expect_reason:#04x} ({cprops})")
        return session_present, reason, cprops

    def alloc_id(self):
        pid = self.next_id
        self.next_id = self.next_id % 65535 + 1
        return pid

    def publish(self, topic, payload=b"", qos=0, retain=False, dup=False, properties=(),
                packet_id=None):
        flags = (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
        body = mstr(topic)
        if qos:
            if packet_id is None:
                packet_id = self.alloc_id()
            body += struct.pack("!H", packet_id)
        if self.version == 5:
            body += encode_props(properties)
        body += payload if isinstance(payload, bytes) else payload.encode()
        self.send_packet(PUBLISH, flags, body)
        return packet_id

    def ack(self, ptype, packet_id, reason=None):
        """PUBACK/PUBREC/PUBREL/PUBCOMP (PUBREL carries flags 0b0010, MQTT 5.0 3.6.1)."""
        body = struct.pack("!H", packet_id)
        if reason is not None and self.version == 5:
            body += bytes([reason])
        self.send_packet(ptype, 0x02 if ptype == PUBREL else 0, body)

    def subscribe(self, filters, properties=()):
        """filters: list of (filter, options byte). Returns SUBACK reason codes."""
        pid = self.alloc_id()
        body = struct.pack("!H", pid)
        if self.version == 5:
            body += encode_props(properties)
        for f, opts in filters:
            body += mstr(f) + bytes([opts])
        self.send_packet(SUBSCRIBE, 0x02, body)
        pkt = self.expect(SUBACK)
        check(struct.unpack_from("!H", pkt.body, 0)[0] == pid, f"{self.label}: SUBACK for another packet id")
        pos = 2
        if self.version == 5:
            _, pos = decode_props(pkt.body, pos)
        return list(pkt.body[pos:])

    def disconnect(self, reason=0, properties=()):
        body = b""
        if self.version == 5 and (reason or properties):
            body = bytes([reason]) + encode_props(properties)
        self.send_packet(DISCONNECT, 0, body)
        self.close()
