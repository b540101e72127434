#!/usr/bin/env python3
"""The web console in a real browser: headless Chromium driven over WebDriver.

Moat issue 6, point 1: log in, read the fleet view, open a device's page and revoke it,
release an alert. The Rust test (crates/moat/tests/console.rs) starts the hub, a live MQTT
session for the device and an alert (a quarantine), runs this script, and then watches that
session drop and the alert end.

It speaks the W3C WebDriver protocol to Debian's chromedriver with urllib alone, so it needs
no Python package: `apt-get install chromium chromium-driver` (see .ci/run). Screenshots of
each step go to --out. The hub's certificate comes from the hub's own CA, which Chromium does
not know, so the session accepts it (acceptInsecureCerts); TLS itself is tested elsewhere.
"""

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
DEADLINE = 20.0


def step(message):
    print(f"- {message}", flush=True)


class Browser:
    def __init__(self, chromedriver, chromium):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.driver = subprocess.Popen(
            [chromedriver, f"--port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # chromedriver reports ready on /status once it listens.
        self.wait(lambda: self.call("GET", "/status", timeout=2).get("ready"), "chromedriver to start")
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": True,
                    "unhandledPromptBehavior": "ignore",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--window-size=1280,1000",
                        ],
                    },
                }
            }
        }
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.load(r).get("value")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"WebDriver {method} {path}: {e.read().decode(errors='replace')}")
        except (urllib.error.URLError, ConnectionError):
            return {}

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def wait(self, predicate, what):
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            try:
                if predicate():
                    return
            except RuntimeError:
                pass
            time.sleep(0.1)
        where = ""
        if getattr(self, "session", None):
            try:
                where = f" at {self.url()}:\n{self.s('GET', '/source')[:3000]}"
            except RuntimeError as e:
                where = f" ({e})"
        raise SystemExit(f"timed out waiting for {what}{where}")

    def go(self, url):
        self.s("POST", "/url", {"url": url})

    def find(self, css):
        return self.s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def text(self, css):
        return self.s("GET", f"/element/{self.find(css)}/text")

    def type(self, css, text):
        self.s("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css):
        self.s("POST", f"/element/{self.find(css)}/click", {})

    def url(self):
        return self.s("GET", "/url")

    def page(self):
        return self.s("GET", "/source")

    def shot(self, out, name):
        png = base64.b64decode(self.s("GET", "/screenshot"))
        path = os.path.join(out, f"{name}.png")
        with open(path, "wb") as f:
            f.write(png)
        step(f"screenshot {path}")

    def close(self):
        try:
            self.s("DELETE", "")
        finally:
            self.driver.terminate()
            self.driver.wait(timeout=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True, help="https://localhost:PORT of the hub's API listener")
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--device", required=True, help="a device with a live MQTT session")
    ap.add_argument("--alert", required=True, help="the id of an alert in force, to release")
    ap.add_argument("--out", required=True, help="directory for screenshots")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for tool in (args.chromium, args.chromedriver):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} is missing: apt-get install chromium chromium-driver (see .ci/run)")

    b = Browser(args.chromedriver, args.chromium)
    try:
        step("log in")
        b.go(args.url + "/console/")
        b.wait(lambda: "/console/login" in b.url(), "the login page")
        b.shot(args.out, "1-login")
        b.type("#user", args.user)
        b.type("#password", args.password)
        b.click("form.login button")
        b.wait(lambda: b.url().endswith("/console/"), "the fleet page")

        step("read the fleet view")
        # The live stream has connected and the count shows the device's session.
        b.wait(lambda: b.text("#live-status") == "live", "live updates")
        b.wait(lambda: b.text("[data-live=online]") == "1", "one device online")
        posture = b.text("#posture h2")
        if not posture.startswith("Posture:"):
            raise SystemExit(f"no posture heading: {posture!r}")
        b.shot(args.out, "2-fleet")

        step(f"open {args.device}'s page")
        b.go(f"{args.url}/console/devices/{args.device}")
        b.wait(lambda: b.text(f"[data-device='{args.device}']") == "online", "the device shown online")
        b.shot(args.out, "3-device")

        step("revoke it (and confirm)")
        b.click("form.danger button")
        b.wait(lambda: b.s("GET", "/alert/text") is not None, "the confirmation")
        b.s("POST", "/alert/accept", {})
        b.wait(lambda: "done=revoke" in b.url(), "the revocation to finish")
        note = b.text("p.notice")
        if "1 live connection(s) closed" not in note:
            raise SystemExit(f"unexpected result: {note!r}")
        b.shot(args.out, "4-revoked")

        step(f"release alert #{args.alert}")
        b.go(args.url + "/console/alerts")
        b.wait(lambda: b.find("svg.chart #alert-timeline-t") is not None, "the alert timeline")
        release = f"/console/alerts/{args.alert}/release"
        b.click(f"form[action='{release}'] button")
        # Back on the alerts page, the alert has ended: no release button any more.
        b.wait(
            lambda: b.url().endswith("/console/alerts") and release not in b.page(),
            "the release to finish",
        )
        b.shot(args.out, "5-alert-released")

        step("narrow screen")
        b.s("POST", "/window/rect", {"width": 390, "height": 900})
        b.go(args.url + "/console/")
        b.shot(args.out, "6-fleet-narrow")
    finally:
        b.close()
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
