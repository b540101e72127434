#!/usr/bin/env python3
"""Request/response and application properties passed through unchanged.

MQTT 5.0 4.10 Request / Response; 3.3.2.3: Payload Format Indicator (MQTT-3.3.2-4), Response
Topic (MQTT-3.3.2-15), Correlation Data (MQTT-3.3.2-16), User Property (MQTT-3.3.2-17/-18: all
forwarded, order kept, keys may repeat), Content Type (MQTT-3.3.2-20); 3.1.2.11.7 Request
Response Information (the server may answer with Response Information).

The requester is a device over mutual TLS; the responder an anonymous client.

Validated against Mosquitto 2.0.11 (tests/interop/reference_mosquitto.py): passes.
"""

from mqtt_interop import PacketTypes, PahoClient, check, props, run, step, unique

USER = [("trace", "abc"), ("k", "1"), ("k", "2"), ("unicode", "žluťoučký kůň")]


def main(args):
    dev = args.device_ids[0]
    base = f"devices/{dev}/{unique('rr')}"

    step("requester connects asking for Response Information")
    req = PahoClient(args, device=dev)
    req.connect(properties=props(PacketTypes.CONNECT, RequestResponseInformation=1))
    info = getattr(req.connack_props(), "ResponseInformation", None)
    check(info is None or isinstance(info, str), f"Response Information {info!r}")
    req.subscribe(f"{base}/response", qos=1)
    rsp = PahoClient(args, transport="plain")
    rsp.connect()
    rsp.subscribe(f"{base}/request", qos=1)

    step("request with Response Topic, Correlation Data, User Properties, Content Type, Payload Format")
    p = props(PacketTypes.PUBLISH, ResponseTopic=f"{base}/response", CorrelationData=b"\x00\xffid-42",
              ContentType="application/json; charset=utf-8", PayloadFormatIndicator=1)
    p.UserProperty = USER
    req.publish(f"{base}/request", b'{"op":"ping"}', qos=1, properties=p)
    m = rsp.expect_message(f"{base}/request")
    q = m.properties
    check(getattr(q, "ResponseTopic", None) == f"{base}/response", f"Response Topic not forwarded: {q}")
    check(getattr(q, "CorrelationData", None) == b"\x00\xffid-42", f"Correlation Data not forwarded: {q}")
    check(getattr(q, "ContentType", None) == "application/json; charset=utf-8", f"Content Type not forwarded: {q}")
    check(getattr(q, "PayloadFormatIndicator", None) == 1, f"Payload Format Indicator not forwarded: {q}")
    check(getattr(q, "UserProperty", None) == USER,
          f"User Properties {getattr(q, 'UserProperty', None)}, expected {USER} in order (MQTT-3.3.2-18)")
    check(m.payload == b'{"op":"ping"}', f"payload {m.payload!r}")

    step("response sent to the Response Topic with the Correlation Data")
    r = props(PacketTypes.PUBLISH, CorrelationData=q.CorrelationData, ContentType="text/plain")
    r.UserProperty = [("status", "ok")]
    rsp.publish(q.ResponseTopic, b"pong", qos=1, properties=r)
    m = req.expect_message(f"{base}/response")
    check(m.payload == b"pong", f"payload {m.payload!r}")
    check(getattr(m.properties, "CorrelationData", None) == b"\x00\xffid-42", "correlation lost on the way back")
    check(getattr(m.properties, "UserProperty", None) == [("status", "ok")], "user property lost on the way back")
    check(getattr(m.properties, "ContentType", None) == "text/plain", "content type lost on the way back")

    step("a message without properties arrives without them")
    rsp.publish(f"{base}/response", b"bare", qos=0)
    m = req.expect_message(f"{base}/response")
    for name in ("ResponseTopic", "CorrelationData", "UserProperty", "ContentType", "PayloadFormatIndicator"):
        check(getattr(m.properties, name, None) in (None, []), f"{name} appeared on a message sent without it")
    req.disconnect()
    rsp.disconnect()


if __name__ == "__main__":
    run(main, __doc__)
