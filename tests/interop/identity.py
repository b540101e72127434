#!/usr/bin/env python3
"""Identity with live sessions: revocation and disabling cut live paho sessions on TLS and
WebSocket within 1 s; policy changes reach live sessions without a reconnect.

Needs --moat BIN and --data-dir DIR (the hub's) so that it can act as an operator with the
`moat` CLI, and devices dev1, dev2, dev3 (dev3 is revoked at the end: run it on its own hub).
"""

import json
import os
import subprocess
import tempfile
import time

from mqtt_interop import Failure, PahoClient, check, run, step, unique

DROP_DEADLINE = 1.0  # seconds from the operator's command returning (issue 3, point 4)


def moat(args, *cmd):
    out = subprocess.run([args.moat, *cmd, "--data-dir", args.data_dir],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise Failure(f"moat {' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def dropped_within(client, returned_at, what):
    """The client's connection closed no later than DROP_DEADLINE after `returned_at`."""
    try:
        rc, _ = client.disconnects.get(timeout=max(0.0, returned_at + DROP_DEADLINE - time.monotonic()))
    except Exception:
        raise Failure(f"{what}: live session still open {DROP_DEADLINE}s after the command returned")
    return rc.value if hasattr(rc, "value") else rc


def must_not_connect(client, what):
    """The handshake or the CONNECT must fail."""
    try:
        client.connect()
    except Failure as e:
        print(f"    refused as expected: {e}")
        client.stop()
        return
    raise Failure(f"{what}: connected")


def audit_entries(args, action, subject, deadline=10.0):
    """Audit entries with `action` on `subject`, waiting (bounded) for events the hub writes
    asynchronously (security events from the packet path are queued, not awaited)."""
    end = time.monotonic() + deadline
    while True:
        trail = moat(args, "audit", "export")
        found = [e for e in (json.loads(line) for line in trail.splitlines() if line.strip())
                 if e["action"] == action and e["subject"] == subject]
        if found or time.monotonic() > end:
            return found
        time.sleep(0.1)


def put_policy(args, name, text):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        moat(args, "policy", "put", name, path)
    finally:
        os.unlink(path)


def policies_live(args):
    dev = args.device_ids[0]
    tag = unique("pol")
    step("policy variables: ${device.id}, ${device.group}, ${device.attr.site} grant exactly their topics")
    put_policy(args, f"{tag}-p", f"""
version = 1
[[statement]]
id = "own"
effect = "allow"
actions = ["connect"]
topics = ["${{device.id}}"]
[[statement]]
id = "site"
effect = "allow"
actions = ["publish", "subscribe", "receive"]
topics = ["sites/${{device.attr.site}}/${{device.group}}/${{device.id}}/#"]
[[statement]]
id = "no-secrets"
effect = "deny"
actions = ["publish", "subscribe"]
topics = ["sites/+/+/+/secret/#"]
""")
    moat(args, "group", "put", f"{tag}-g", "--policy", f"{tag}-p")
    moat(args, "device", "set", dev, "--group", f"{tag}-g", "--attr", "site=plant7")
    base = f"sites/plant7/{tag}-g/{dev}"

    verdict = moat(args, "policy", "test", dev, "publish", f"{base}/temp")
    check(verdict.startswith("ALLOW") and f"{tag}-p/site" in verdict, f"policy test: {verdict!r}")
    verdict = moat(args, "policy", "test", dev, "publish", f"{base}/secret/x")
    check(verdict.startswith("DENY") and f"{tag}-p/no-secrets" in verdict,
          f"explicit deny must win and be named: {verdict!r}")
    verdict = moat(args, "policy", "test", dev, "publish", f"sites/other/{tag}-g/{dev}/temp")
    check(verdict.startswith("DENY"), f"another site's topic: {verdict!r}")

    c = PahoClient(args, device=dev)
    c.connect()
    rcs = c.subscribe(f"{base}/#", qos=1)
    check(rcs[0] >= 0x80, f"a wildcard reaching a denied topic ({base}/secret/...) was granted: {rcs}")
    rcs = c.subscribe(f"{base}/temp", qos=1)
    check(rcs[0] < 0x80, f"subscribe within the attribute-bound namespace refused: {rcs}")
    rcs = c.subscribe(f"sites/plant8/{tag}-g/{dev}/#", qos=1)
    check(rcs[0] >= 0x80, f"subscribe to another site's namespace granted: {rcs}")
    rc = c.publish(f"{base}/secret/k", b"x", qos=1, expect_rc=None)
    check(rc >= 0x80, f"publish to a denied topic was accepted (reason {rc})")
    denied = audit_entries(args, "policy.denied", f"device:{dev}")
    check(any(f"{tag}-p/no-secrets" in e["detail"].get("decision", "") for e in denied),
          f"the refused publish and the statement that refused it are not on the record: {denied}")
    c.publish(f"{base}/temp", b"21.5", qos=1)
    m = c.expect_message(f"{base}/temp", what="own allowed message")
    check(m.payload == b"21.5", "payload")

    step("policy change reaches the live session: its subscription stops receiving, its publish is refused")
    put_policy(args, f"{tag}-p", """
version = 1
[[statement]]
id = "connect-only"
effect = "allow"
actions = ["connect"]
topics = ["${device.id}"]
""")
    anon = PahoClient(args, transport="plain")
    anon.connect()
    anon.publish(f"{base}/temp", b"after-change", qos=1)
    c.expect_no_message(what="a subscription the new policy no longer allows must stop receiving")
    rc = c.publish(f"{base}/temp", b"x", qos=1, expect_rc=None)
    check(rc >= 0x80, f"publish still allowed after the policy change (reason {rc})")
    check(c.c.is_connected(), "the session must survive a policy change that still allows connect")
    c.disconnect()
    anon.disconnect()

    step("a policy that no longer allows connect closes the live session")
    c = PahoClient(args, device=dev)
    c.connect()
    returned = None
    put_policy(args, f"{tag}-p", """
version = 1
[[statement]]
id = "nothing"
effect = "allow"
actions = ["publish"]
topics = ["nowhere"]
""")
    returned = time.monotonic()
    rc = dropped_within(c, returned, f"{dev} after its policy stopped allowing connect")
    check(rc == 0x87, f"DISCONNECT reason {rc}, expected 0x87 Not authorized")
    # Back to the default rule for later steps.
    moat(args, "device", "set", dev, "--reset")


def receive_rules(args):
    dev = args.device_ids[0]
    tag = unique("rcv")
    step("receive rules narrower than the subscription: only allowed topics are delivered")
    put_policy(args, f"{tag}-p", """
version = 1
[[statement]]
id = "connect"
effect = "allow"
actions = ["connect"]
topics = ["${device.id}"]
[[statement]]
id = "listen-wide"
effect = "allow"
actions = ["subscribe"]
topics = ["devices/${device.id}/#"]
[[statement]]
id = "receive-narrow"
effect = "allow"
actions = ["receive"]
topics = ["devices/${device.id}/ok/#"]
""")
    moat(args, "device", "set", dev, "--reset", "--policy", f"{tag}-p")
    c = PahoClient(args, device=dev)
    c.connect()
    c.subscribe(f"devices/{dev}/#", qos=1, expect=[1])
    anon = PahoClient(args, transport="plain")
    anon.connect()
    anon.publish(f"devices/{dev}/no/x", b"withheld", qos=1)
    anon.publish(f"devices/{dev}/ok/x", b"delivered", qos=1)
    m = c.expect_message(what="the allowed topic")
    check(m.topic == f"devices/{dev}/ok/x" and m.payload == b"delivered",
          f"got {m.topic!r} {m.payload!r}: a message the receive rules withhold was delivered")
    c.expect_no_message(what="nothing else")
    c.disconnect()
    anon.disconnect()
    moat(args, "device", "set", dev, "--reset")


def disable_and_revoke(args):
    dev2, dev3 = args.device_ids[1], args.device_ids[2]
    step("disable: live TLS session closed within 1 s; enable lets it back")
    c = PahoClient(args, device=dev2)
    c.connect()
    moat(args, "device", "disable", dev2, "--reason", "maintenance")
    rc = dropped_within(c, time.monotonic(), f"{dev2} (TLS) after disable")
    check(rc == 0x87, f"DISCONNECT reason {rc}, expected 0x87")
    must_not_connect(PahoClient(args, device=dev2), f"{dev2} while disabled")
    moat(args, "device", "enable", dev2)
    c = PahoClient(args, device=dev2)
    c.connect()
    c.disconnect()

    step("revoke: live sessions on TLS and on WebSocket closed within 1 s")
    tls = PahoClient(args, device=dev3)
    tls.connect()
    if args.wss_port:
        wss = PahoClient(args, transport="wss", device=dev2)
        wss.connect(port=args.wss_port)
    moat(args, "device", "revoke", dev3, "--reason", "keyCompromise")
    rc = dropped_within(tls, time.monotonic(), f"{dev3} (TLS) after revoke")
    check(rc == 0x87, f"DISCONNECT reason {rc}, expected 0x87")
    if args.wss_port:
        moat(args, "device", "revoke", dev2, "--reason", "cessationOfOperation")
        rc = dropped_within(wss, time.monotonic(), f"{dev2} (WebSocket) after revoke")
        check(rc == 0x87, f"DISCONNECT reason {rc}, expected 0x87")

    step("a revoked device's next handshake fails")
    must_not_connect(PahoClient(args, device=dev3), f"{dev3} after revocation")

    step("revocation and the refused handshake are on the record, with reasons")
    revokes = audit_entries(args, "device.revoke", f"device:{dev3}")
    check(revokes, "no device.revoke entry in the audit trail")
    check(revokes[-1]["detail"].get("reason") == "keyCompromise", f"reason not recorded: {revokes[-1]}")
    rejected = audit_entries(args, "auth.certificate_rejected", f"device:{dev3}")
    check(rejected and "revoked" in rejected[-1]["detail"].get("reason", ""),
          "the refused handshake of the revoked device is not in the audit trail with its reason")


def conflicts(args):
    dev = args.device_ids[0]
    step("the same certificate live from two addresses: takeover plus a suspected-clone record")
    first = PahoClient(args, device=dev)
    first.connect(bind_address="127.0.0.1")
    second = PahoClient(args, device=dev)
    second.connect(bind_address="127.0.0.2")
    rc = first.expect_disconnected()
    check(rc == 0x8E, f"the first connection got {rc}, expected 0x8E Session taken over")
    step("a certificate claiming another client id is refused and counted")
    other = PahoClient(args, device=dev, client_id=unique("not-" + dev))
    other.connect(expect_rc=0x87)
    second.disconnect()
    found = json.loads(moat(args, "device", "conflicts", "--json"))
    mine = [c for c in found["items"] if c["device"] == dev]
    check(mine, f"no conflict recorded for {dev}: {found}")
    check(mine[0]["suspected_clones"] >= 1, f"suspected clone not counted: {mine[0]}")
    check(mine[0]["client_id_mismatches"] >= 1, f"client id mismatch not counted: {mine[0]}")
    check({"127.0.0.1", "127.0.0.2"} <= set(mine[0]["addresses"]), f"addresses: {mine[0]}")
    clones = audit_entries(args, "security.suspected_clone", f"device:{dev}")
    check(clones, "no security.suspected_clone entry in the audit trail")

    step("an anonymous client may not use a registered device's client id (nor its session)")
    squatter = PahoClient(args, transport="plain", client_id=dev)
    squatter.connect(expect_rc=0x87)


def main(args):
    conflicts(args)
    policies_live(args)
    receive_rules(args)
    disable_and_revoke(args)


def extra_args(ap):
    ap.add_argument("--moat", required=True)
    ap.add_argument("--data-dir", required=True)


if __name__ == "__main__":
    run(main, __doc__, extra_args)
