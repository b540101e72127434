#!/usr/bin/env python3
"""Topic aliases, client to server and server to client.

MQTT 5.0 3.3.2.3.4 Topic Alias: a PUBLISH with a topic and an alias sets the mapping; one with
an empty topic and the alias uses it; the mapping can be changed (MQTT-3.3.2-12); the other
direction is independent. 3.2.2.3.8 Topic Alias Maximum in CONNACK; MQTT-3.3.2-9 / -10: the
server must not send aliases to a client that set none, nor above the client's maximum.
(Invalid aliases, DISCONNECT 0x94, are in crates/moat/tests/wire.rs.)

Moat-only (known_deviation, skipped with --reference mosquitto): the server assigns aliases
for messages it sends when the client allows it (Moat issue 2, point 3); Mosquitto never does.

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py): passes except the
Moat-only step, which is skipped.
"""

from mqtt_interop import (PahoClient, RawClient, check, known_deviation, run, step, unique)


def client_to_server(args):
    dev = args.device_ids[0]
    base = f"devices/{dev}/{unique('alias')}"
    obs = PahoClient(args, transport="plain")
    obs.connect()
    obs.subscribe(f"{base}/#", qos=1)

    raw = RawClient(args, device=dev)
    _, _, cprops = raw.connect(dev)
    maximum = cprops.get("TopicAliasMaximum", 0)
    step(f"CONNACK Topic Alias Maximum = {maximum}")
    check(maximum >= 1, "the server accepts no topic aliases (CONNACK Topic Alias Maximum absent or 0); "
                        "Moat promises aliases in both directions")

    step("alias 1 set with a topic, then used with an empty topic")
    t1, t2 = f"{base}/first/long/topic/name", f"{base}/second/long/topic/name"
    raw.publish(t1, b"a", qos=0, properties=[("TopicAlias", 1)])
    raw.publish("", b"b", qos=0, properties=[("TopicAlias", 1)])
    for payload in (b"a", b"b"):
        m = obs.expect_message(t1, what="message published through alias 1")
        check(m.payload == payload, f"payload {m.payload!r}, expected {payload!r}")
        check(getattr(m.properties, "TopicAlias", None) is None,
              "the publisher's Topic Alias leaked to the subscriber (it is per connection)")

    step("alias 1 re-mapped to another topic (MQTT-3.3.2-12); QoS 1 through an alias")
    raw.publish(t2, b"c", qos=1, properties=[("TopicAlias", 1)], packet_id=10)
    raw.expect(4)  # PUBACK
    raw.publish("", b"d", qos=1, properties=[("TopicAlias", 1)], packet_id=11)
    raw.expect(4)
    for payload in (b"c", b"d"):
        m = obs.expect_message(t2, what="message through the re-mapped alias")
        check(m.payload == payload, f"payload {m.payload!r}")
    if maximum >= 2:
        raw.publish(t1, b"e", qos=0, properties=[("TopicAlias", maximum)])
        raw.publish("", b"f", qos=0, properties=[("TopicAlias", maximum)])
        for payload in (b"e", b"f"):
            m = obs.expect_message(t1, what=f"message through alias {maximum} (the maximum)")
            check(m.payload == payload, f"payload {m.payload!r}")
    raw.disconnect()
    obs.disconnect()


def server_to_client(args):
    topic = f"alias/{unique()}/a/rather/long/topic/name/worth/aliasing"
    step("a client that allows no aliases never receives one (MQTT-3.3.2-9)")
    pub = PahoClient(args, transport="plain")
    pub.connect()
    none = RawClient(args, transport="plain")
    none.connect(unique("noalias"))
    check(none.subscribe([(topic, 0)]) == [0], "SUBACK")
    for i in range(3):
        pub.publish(topic, str(i).encode(), qos=0)
        p = none.expect_publish()
        check("TopicAlias" not in p.props, f"server sent a Topic Alias to a client with maximum 0: {p}")
        check(p.topic == topic, f"topic {p.topic!r}")
    none.disconnect()

    step("aliases the server sends stay within the client's Topic Alias Maximum and resolve correctly")
    raw = RawClient(args, transport="plain")
    raw.connect(unique("alias"), properties=[("TopicAliasMaximum", 2)])
    check(raw.subscribe([(topic, 0)]) == [0], "SUBACK")
    aliases = {}
    used_alias_only = False
    for i in range(5):
        pub.publish(topic, str(i).encode(), qos=0)
        p = raw.expect_publish()
        alias = p.props.get("TopicAlias")
        if alias is not None:
            check(1 <= alias <= 2, f"server sent Topic Alias {alias} above the client's maximum 2 (MQTT-3.3.2-10)")
            if p.topic:
                aliases[alias] = p.topic
            else:
                check(alias in aliases, f"server used alias {alias} before mapping it")
                used_alias_only = True
        resolved = p.topic or aliases.get(alias)
        check(resolved == topic, f"message {i} resolves to {resolved!r}, expected {topic!r}")
        check(p.payload == str(i).encode(), f"payload {p.payload!r}")
    step(f"server sent alias-only PUBLISHes: {used_alias_only}")
    if not known_deviation(args, "Mosquitto never assigns outbound topic aliases"):
        check(used_alias_only, "the server never used a topic alias although the client allowed 2 "
                               "(Moat assigns aliases outbound when the client allows)")
    raw.disconnect()
    pub.disconnect()


def aliases_do_not_survive_the_connection(args):
    """MQTT 5.0 3.3.2.3.4: Topic Alias mappings exist only within a Network Connection; a
    PUBLISH resent on a new connection must not rely on an alias from the old one."""
    topic = f"alias/{unique()}/resent/after/reconnect/with/a/long/name"
    cid = unique("aliasre")
    step("unacknowledged message resent after reconnect: topic spelled out or alias redefined")
    raw = RawClient(args, transport="plain")
    raw.connect(cid, properties=[("TopicAliasMaximum", 4), ("SessionExpiryInterval", 300)])
    check(raw.subscribe([(topic, 1)]) == [1], "SUBACK")
    pub = PahoClient(args, transport="plain")
    pub.connect()
    for i in range(3):
        pub.publish(topic, f"r{i}".encode(), qos=1)
    first = [raw.expect_publish() for _ in range(3)]
    raw.close()  # none acknowledged
    raw = RawClient(args, transport="plain")
    sp, _, _ = raw.connect(cid, clean_start=False,
                           properties=[("TopicAliasMaximum", 4), ("SessionExpiryInterval", 300)])
    check(sp, "session not resumed")
    aliases = {}
    for i in range(3):
        p = raw.expect_publish()
        alias = p.props.get("TopicAlias")
        if p.topic:
            if alias is not None:
                aliases[alias] = p.topic
            resolved = p.topic
        else:
            check(alias in aliases, f"resent PUBLISH {i} uses Topic Alias {alias} from the previous "
                                    f"connection, never defined on this one (3.3.2.3.4)")
            resolved = aliases[alias]
        check(resolved == topic and p.payload == f"r{i}".encode(),
              f"resent message {i}: {resolved!r} {p.payload!r}")
        check(p.dup, f"resent message {i} without DUP=1")
        raw.ack(4, p.packet_id)
    raw.disconnect(properties=[("SessionExpiryInterval", 0)])
    pub.disconnect()
    del first


def main(args):
    client_to_server(args)
    server_to_client(args)
    aliases_do_not_survive_the_connection(args)


if __name__ == "__main__":
    run(main, __doc__)
