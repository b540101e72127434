#!/usr/bin/env python3
"""Run the interop scripts against Debian's Mosquitto, set up like Moat's defaults.

This validates the scripts themselves: a script that fails against Mosquitto is either wrong or
tests something Mosquitto does not do (those are marked "Moat-only" at their top and are
expected to fail here). Not run by `cargo test`; run it by hand:

    python3 tests/interop/reference_mosquitto.py            # every script, summary at the end
    python3 tests/interop/reference_mosquitto.py qos.py     # some scripts
    python3 tests/interop/reference_mosquitto.py --serve    # print the arguments and wait

Setup (mirrors Moat: root CA -> issuing CA -> leaves; client certificate chain = leaf +
issuing CA; CN = device id), made with the openssl CLI in a temporary directory:
  - mutual-TLS listener: require_certificate, use_identity_as_username, ACL
    `pattern readwrite devices/%u/#`
  - plaintext listener with allow_anonymous and no ACL (Moat's --danger-allow-anonymous)
  - MQTT over secure WebSocket, same TLS and ACL rules
  - max_keepalive 60 (pass --max-keepalive 60 to scripts)
Mosquitto has no "client id must equal certificate CN" rule; the scripts do not test it.
"""

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
DEVICES = ["dev1", "dev2", "dev3"]
MAX_KEEPALIVE = 60


def sh(*cmd, cwd):
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_pki(d):
    """Root CA, issuing CA, a server certificate for localhost/127.0.0.1, device certificates."""
    with open(os.path.join(d, "ca.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
                "extendedKeyUsage=serverAuth\n")
    with open(os.path.join(d, "client.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sh("openssl", "req", "-x509", *ec, "-keyout", "root.key", "-out", "ca.crt", "-days", "2",
       "-subj", "/CN=reference root", "-addext", "basicConstraints=critical,CA:TRUE",
       "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)

    def leaf(name, subject, ext, issuer_crt, issuer_key):
        sh("openssl", "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
        sh("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", issuer_crt, "-CAkey", issuer_key,
           "-CAcreateserial", "-out", f"{name}.leaf.crt", "-days", "2", "-extfile", ext, cwd=d)

    leaf("issuing", "/CN=reference issuing", "ca.ext", "ca.crt", "root.key")
    leaf("server", "/CN=localhost", "server.ext", "issuing.leaf.crt", "issuing.key")
    for dev in DEVICES:
        leaf(dev, f"/CN={dev}", "client.ext", "issuing.leaf.crt", "issuing.key")
    for name in ["server"] + DEVICES:
        with open(os.path.join(d, f"{name}.crt"), "wb") as out:
            for part in (f"{name}.leaf.crt", "issuing.leaf.crt"):
                with open(os.path.join(d, part), "rb") as f:
                    out.write(f.read())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(d):
    tls, plain, wss = free_port(), free_port(), free_port()
    with open(os.path.join(d, "acl"), "w") as f:
        f.write("pattern readwrite devices/%u/#\n")
    tls_block = (f"cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"
                 f"require_certificate true\nuse_identity_as_username true\nacl_file {d}/acl\n")
    with open(os.path.join(d, "mosquitto.conf"), "w") as f:
        f.write(f"user {getpass.getuser()}\nper_listener_settings true\npersistence false\nlog_dest stderr\nlog_type all\n"
                f"max_keepalive {MAX_KEEPALIVE}\n"
                f"listener {tls} 127.0.0.1\n{tls_block}"
                f"listener {plain} 127.0.0.1\nallow_anonymous true\n"
                f"listener {wss} 127.0.0.1\nprotocol websockets\n{tls_block}")
    log = open(os.path.join(d, "mosquitto.log"), "wb")
    proc = subprocess.Popen([MOSQUITTO, "-c", os.path.join(d, "mosquitto.conf")],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    for port in (tls, plain, wss):
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    sys.exit(f"mosquitto did not start; see {d}/mosquitto.log")
                time.sleep(0.05)  # polling for the port to open; mosquitto has no ready signal
    args = ["--host", "127.0.0.1", "--tls-port", str(tls), "--plain-port", str(plain),
            "--wss-port", str(wss), "--cafile", f"{d}/ca.crt", "--certdir", d,
            "--devices", ",".join(DEVICES), "--max-keepalive", str(MAX_KEEPALIVE),
            "--reference", "mosquitto"]
    return proc, args


def main():
    serve = "--serve" in sys.argv
    keep = "--keep" in sys.argv
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    if not names:
        names = sorted(n for n in os.listdir(HERE)
                       if n.endswith(".py") and n not in ("mqtt_interop.py", os.path.basename(__file__)))
    d = tempfile.mkdtemp(prefix="moat-ref-mosquitto-")
    make_pki(d)
    proc, args = start(d)
    try:
        if serve:
            print(" ".join(args), flush=True)
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGTERM])
            signal.sigwait([signal.SIGINT, signal.SIGTERM])
            return
        results = []
        for name in names:
            t0 = time.monotonic()
            r = subprocess.run([sys.executable, "-B", os.path.join(HERE, name), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=200)
            out = r.stdout.decode(errors="replace")
            results.append((name, r.returncode, time.monotonic() - t0, out))
            print(f"== {name}: exit {r.returncode} ({time.monotonic() - t0:.1f}s)\n{out}", flush=True)
        print("\nSummary against Mosquitto:")
        for name, rc, secs, _ in results:
            print(f"  {'PASS' if rc == 0 else 'FAIL'}  {name}  ({secs:.1f}s)")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if keep:
            print(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
