#!/usr/bin/env python3
"""python-tuf's ngclient verifies the hub's update repository end to end.

Moat issue 5: the image repository the hub serves under /tuf/ is plain TUF 1.0 (consistent
snapshots, delegations per hardware class, root rotation), so an independent client verifies
it. ngclient starts from the pinned version-1 root, walks the root rotation, verifies
timestamp, snapshot, targets and the delegated hw-CLASS role, then downloads the target and
checks its length and hashes. Over mutual TLS with the device's certificate (requests), also:
the device's director metadata (a second TUF repository) and an HTTP range request (resume).

Usage: ota_ngclient.py --base https://localhost:PORT --ca CA --cert CRT --key KEY
       --image-root FILE --director-root FILE --target NAME --sha256 HEX --work DIR
"""

import argparse
import hashlib
import os
import shutil
import sys

import requests
from tuf.api import exceptions
from tuf.ngclient import FetcherInterface, Updater


class MutualTlsFetcher(FetcherInterface):
    """ngclient's downloads through a requests session with the device's certificate."""

    def __init__(self, ca, cert, key):
        self.session = requests.Session()
        # REQUESTS_CA_BUNDLE and friends would override session.verify: trust only the hub's CA.
        self.session.trust_env = False
        self.session.verify = ca
        self.session.cert = (cert, key)

    def _fetch(self, url):
        r = self.session.get(url, stream=True, timeout=30)
        if r.status_code != 200:
            raise exceptions.DownloadHTTPError(f"GET {url}: {r.status_code}", r.status_code)
        return r.iter_content(chunk_size=64 * 1024)


def step(text):
    print(f"--- {text}", flush=True)


def check(cond, text):
    if not cond:
        print(f"FAIL: {text}", flush=True)
        sys.exit(1)


def fresh_dir(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def main():
    p = argparse.ArgumentParser()
    for a in ["base", "ca", "cert", "key", "image-root", "director-root", "target", "sha256", "work"]:
        p.add_argument("--" + a, required=True)
    args = p.parse_args()
    fetcher = MutualTlsFetcher(args.ca, args.cert, args.key)

    step("image repository: refresh from the pinned version-1 root")
    meta = fresh_dir(os.path.join(args.work, "image-metadata"))
    targets = fresh_dir(os.path.join(args.work, "targets"))
    with open(args.image_root, "rb") as f:
        root = f.read()
    updater = Updater(
        metadata_dir=meta,
        metadata_base_url=f"{args.base}/tuf/metadata/",
        target_base_url=f"{args.base}/tuf/targets/",
        target_dir=targets,
        fetcher=fetcher,
        bootstrap=root,
    )
    updater.refresh()
    trusted_root = updater._trusted_set.root.version
    print(f"trusted root version {trusted_root}")
    check(trusted_root >= 2, f"root rotation not followed (root version {trusted_root})")


    step(f"target {args.target} through its delegation")
    info = updater.get_targetinfo(args.target)
    check(info is not None, f"{args.target} not found")
    check(info.hashes.get("sha256") == args.sha256, f"sha256 {info.hashes} != {args.sha256}")
    path = updater.download_target(info)
    with open(path, "rb") as f:
        data = f.read()
    check(len(data) == info.length, "length")
    check(hashlib.sha256(data).hexdigest() == args.sha256, "downloaded bytes")
    check(updater.get_targetinfo("no-such-target-1.0") is None, "unknown target found")

    step("resume: an HTTP range of the target")
    dirname, _, base = args.target.rpartition("/")
    rel = (dirname + "/" if dirname else "") + f"{args.sha256}.{base}"
    r = fetcher.session.get(f"{args.base}/tuf/targets/{rel}", headers={"Range": "bytes=100-"}, timeout=30)
    check(r.status_code == 206, f"range status {r.status_code}")
    check(r.content == data[100:], "range bytes")
    check(r.headers.get("Content-Range") == f"bytes 100-{len(data) - 1}/{len(data)}",
          f"Content-Range {r.headers.get('Content-Range')}")
    r = fetcher.session.get(f"{args.base}/tuf/targets/{rel}",
                            headers={"Range": f"bytes={len(data)}-"}, timeout=30)
    check(r.status_code == 416, f"unsatisfiable range status {r.status_code}")

    step("without a certificate or token the repository is closed")
    anonymous = requests.Session()
    anonymous.trust_env = False
    r = anonymous.get(f"{args.base}/tuf/metadata/timestamp.json", verify=args.ca, timeout=30)
    check(r.status_code == 401, f"anonymous read: {r.status_code}")

    step("director repository: this device's metadata")
    dmeta = fresh_dir(os.path.join(args.work, "director-metadata"))
    with open(args.director_root, "rb") as f:
        droot = f.read()
    director = Updater(
        metadata_dir=dmeta,
        metadata_base_url=f"{args.base}/tuf/director/metadata/",
        target_base_url=f"{args.base}/tuf/targets/",
        target_dir=targets,
        fetcher=fetcher,
        bootstrap=droot,
    )
    director.refresh()
    print(f"director root version {director._trusted_set.root.version}")
    dtargets = director._trusted_set.targets.targets
    print(f"director targets for this device: {sorted(dtargets)}")
    check(len(dtargets) <= 1, "more than one director target")
    print("OK")


if __name__ == "__main__":
    main()
