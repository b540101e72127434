//! Signed updates end to end (issue 5): a real hub, the offline ceremony and publishing
//! through the CLI, then python-tuf's ngclient verifies the served repository (root rotation,
//! delegation, download, range) over mutual TLS with a device certificate.

mod support;

use std::path::Path;

use serde_json::Value;
use support::*;

/// Deterministic, incompressible-looking test image bytes.
fn image(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x & 0xff) as u8
        })
        .collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn ceremony_publish_and_python_tuf_ngclient_verify_the_served_repository() {
    let hub = Hub::start(HubOptions::new());
    let dev = hub.add_device("ota-dev-1");
    let keys = hub.scratch("ota-keys");
    let work = hub.scratch("ota-work");

    // Before the ceremony there is nothing to serve, and nothing to publish into.
    let status = json(&cli_ok(&hub, &["ota", "targets", "--json"]));
    assert_eq!(status["targets"], Value::Array(vec![]));

    // The online keys, then the ceremony: two root keys per repository, threshold two.
    let online = json(&cli_ok(&hub, &["ota", "online-keys", "--json"]));
    assert_eq!(
        online["key_ids"]["image_timestamp"].as_str().map(str::len),
        Some(64)
    );
    let online_file = work.join("online.json");
    std::fs::write(&online_file, online.to_string()).expect("write");
    let out_dir = hub.scratch("ota-root-out");
    // Offline: sign into a file; then install it on the hub's side.
    cli_ok(
        &hub,
        &[
            "ota",
            "init",
            "--keys",
            path_str(&keys),
            "--root-keys",
            "2",
            "--root-threshold",
            "2",
            "--online-keys",
            path_str(&online_file),
            "--out",
            path_str(&out_dir),
        ],
    );
    let installed = cli_ok(&hub, &["ota", "root", "install", path_str(&out_dir)]);
    assert!(installed.contains("image root version 1"), "{installed}");
    // What devices pin: version 1 of both roots.
    let pinned_image = work.join("pinned-image-root.json");
    let pinned_director = work.join("pinned-director-root.json");
    std::fs::copy(keys.join("image-root.json"), &pinned_image).expect("copy");
    std::fs::copy(keys.join("director-root.json"), &pinned_director).expect("copy");
    // A second ceremony into the same key directory is refused.
    let again = cli(&hub, &["ota", "init", "--keys", path_str(&keys)]);
    assert!(!again.status.success(), "{}", show_output(&again));

    // Publish an image for any hardware, and one for the rpi4 class (version from the name).
    let any = work.join("agent.img");
    std::fs::write(&any, image(50_000, 1)).expect("write");
    let out = cli_ok(
        &hub,
        &[
            "ota",
            "publish",
            path_str(&any),
            "--name",
            "agent",
            "--version",
            "1.0.0",
            "--keys",
            path_str(&keys),
        ],
    );
    assert!(out.contains("published agent-1.0.0"), "{out}");
    let fw = work.join("fw-1.2.0.bin");
    std::fs::write(&fw, image(300_000, 2)).expect("write");
    let out = cli_ok(
        &hub,
        &[
            "ota",
            "publish",
            path_str(&fw),
            "--name",
            "fw",
            "--hardware",
            "rpi4",
            "--keys",
            path_str(&keys),
        ],
    );
    assert!(out.contains("published rpi4/fw-1.2.0"), "{out}");
    assert!(out.contains("hw-rpi4"), "{out}");
    // Publishing the same version again is refused by the hub (and says why).
    let dup = cli(
        &hub,
        &[
            "ota",
            "publish",
            path_str(&fw),
            "--name",
            "fw",
            "--hardware",
            "rpi4",
            "--keys",
            path_str(&keys),
        ],
    );
    assert!(!dup.status.success(), "{}", show_output(&dup));
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("already published"),
        "{}",
        show_output(&dup)
    );

    // The targets key leaked: rotate the roots with a new targets key (the two old root keys
    // sign the new root), then publish again with the new key.
    let out = cli_ok(
        &hub,
        &[
            "ota",
            "root",
            "rotate",
            "--keys",
            path_str(&keys),
            "--replace-targets-key",
        ],
    );
    assert!(out.contains("image root version 2"), "{out}");
    assert_eq!(
        std::fs::read_dir(keys.join("retired"))
            .expect("retired keys")
            .count(),
        1,
        "the old targets key is kept aside"
    );
    // And new root keys (both repositories; the old ones sign this rotation once more).
    let out = cli_ok(
        &hub,
        &[
            "ota",
            "root",
            "rotate",
            "--keys",
            path_str(&keys),
            "--replace-root-key",
        ],
    );
    assert!(out.contains("image root version 3"), "{out}");
    assert!(out.contains("director root version 3"), "{out}");
    assert_eq!(
        std::fs::read_dir(keys.join("retired"))
            .expect("retired keys")
            .count(),
        5,
        "old targets key and four old root keys kept aside"
    );
    let fw2 = work.join("fw-1.3.0.bin");
    std::fs::write(&fw2, image(400_000, 3)).expect("write");
    cli_ok(
        &hub,
        &[
            "ota",
            "publish",
            path_str(&fw2),
            "--name",
            "fw",
            "--hardware",
            "rpi4",
            "--keys",
            path_str(&keys),
        ],
    );
    let listed = json(&cli_ok(&hub, &["ota", "targets", "--json"]));
    let names: Vec<&str> = listed["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["agent-1.0.0", "rpi4/fw-1.2.0", "rpi4/fw-1.3.0"]);
    let table = cli_ok(&hub, &["ota", "targets"]);
    assert!(
        table.contains("rpi4/fw-1.3.0") && table.contains("rpi4"),
        "{table}"
    );

    // An independent TUF client verifies it all, as the device.
    let sha = listed["targets"][2]["sha256"]
        .as_str()
        .expect("sha256")
        .to_owned();
    let expected = tool_ok(
        "python3",
        &[
            "-c",
            "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
            path_str(&fw2),
        ],
        Path::new("."),
    );
    assert_eq!(
        sha,
        expected.trim(),
        "the hub lists the bytes that were published"
    );
    let base = format!("https://localhost:{}", hub.addrs.api.port());
    let script = interop_dir().join("ota_ngclient.py");
    let out = run_with_deadline(
        std::process::Command::new("python3")
            .arg("-B")
            .arg(&script)
            .args(["--base", &base])
            .args(["--ca", path_str(&dev.ca)])
            .args(["--cert", path_str(&dev.cert)])
            .args(["--key", path_str(&dev.key)])
            .args(["--image-root", path_str(&pinned_image)])
            .args(["--director-root", path_str(&pinned_director)])
            .args(["--target", "rpi4/fw-1.3.0"])
            .args(["--sha256", &sha])
            .args(["--work", path_str(&work.join("ngclient"))])
            .env("PYTHONUNBUFFERED", "1"),
        SCRIPT_DEADLINE,
    );
    let text = show_output(&out);
    assert!(
        !text.contains("No module named 'tuf'"),
        "python-tuf is not installed: python3 -m pip install 'tuf>=6,<7' (see .ci/run)"
    );
    assert!(
        out.status.success(),
        "ngclient refused the repository\n{text}"
    );
    assert!(text.contains("trusted root version 3"), "{text}");
    assert!(text.contains("director root version 3"), "{text}");

    // An API token reads the repository and the director's roots, not a device's
    // instructions.
    let token = std::fs::read_to_string(hub.data_dir().join("secrets").join("cli.token"))
        .expect("the CLI token");
    const STATUS: &str = "import ssl, sys, urllib.request, urllib.error\n\
        ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
        req = urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[3]})\n\
        try:\n    print(urllib.request.urlopen(req, context=ctx, timeout=10).status)\n\
        except urllib.error.HTTPError as e:\n    print(e.code)\n";
    for (path, expected) in [
        ("/tuf/metadata/timestamp.json", "200"),
        ("/tuf/director/metadata/1.root.json", "200"),
        ("/tuf/director/metadata/timestamp.json", "403"),
        ("/tuf/metadata/..%2Fsecrets%2Fcli.token", "404"),
    ] {
        let url = format!("{base}{path}");
        let got = tool_ok(
            "python3",
            &["-B", "-c", STATUS, &url, path_str(&dev.ca), token.trim()],
            Path::new("."),
        );
        assert_eq!(got.trim(), expected, "GET {path} with an API token");
    }

    // The offline roles' expiry times are visible to monitoring, and in the future.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for series in [
        r#"{repository="image",role="root"}"#,
        r#"{repository="image",role="targets"}"#,
        r#"{repository="director",role="root"}"#,
    ] {
        let at = hub
            .metric(&format!(
                "moat_ota_offline_metadata_expiry_timestamp_seconds{series}"
            ))
            .unwrap_or_else(|| panic!("no expiry metric for {series}"));
        assert!(at > now, "{series} expires at {at}, before now ({now})");
    }

    // Every step is in the audit trail.
    let trail = cli_ok(&hub, &["audit", "export"]);
    for action in [
        "ota.root.install",
        "ota.root.rotate",
        "ota.upload",
        "ota.target.publish",
    ] {
        assert!(
            trail.contains(&format!("\"{action}\"")),
            "no {action} in the audit trail"
        );
    }
}

/// Uploads being received are bounded (`MAX_UPLOADS_IN_PROGRESS` = 4): a fifth is refused
/// with 429 while four bodies are still arriving, and a slot frees when an upload is
/// abandoned (its partial file removed).
#[test]
fn uploads_in_progress_are_bounded_and_an_abandoned_one_frees_its_slot() {
    let hub = Hub::start(HubOptions::new());
    let dev = hub.add_device("ota-upload-dev");
    let token = std::fs::read_to_string(hub.data_dir().join("secrets").join("cli.token"))
        .expect("the CLI token");
    let uploads = hub.data_dir().join("ota").join("uploads");
    // Four uploads announce 1 MiB and send 1 KiB; once the hub has opened their partial
    // files (so their slots are taken), a fifth is tried, then one of the four is cut and a
    // small complete upload is tried again once the hub removed that one's partial file.
    const SCRIPT: &str = r#"
import http.client, json, os, ssl, sys, time
host, port, cafile, token, uploads = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)
def parts():
    return len([f for f in os.listdir(uploads) if f.endswith('.part')])
def wait_parts(n):
    end = time.monotonic() + 20
    while parts() != n:
        if time.monotonic() > end:
            sys.exit('partial uploads: %d, expected %d' % (parts(), n))
        time.sleep(0.05)
def start():
    c = http.client.HTTPSConnection(host, port, context=ctx, timeout=20)
    c.putrequest('POST', '/api/v1/ota/uploads')
    c.putheader('Authorization', 'Bearer ' + token)
    c.putheader('Content-Length', str(1 << 20))
    c.endheaders()
    c.send(b'x' * 1024)
    return c
def complete(body):
    c = http.client.HTTPSConnection(host, port, context=ctx, timeout=20)
    c.request('POST', '/api/v1/ota/uploads', body=body, headers={'Authorization': 'Bearer ' + token})
    r = c.getresponse()
    out = (r.status, json.loads(r.read() or b'{}'))
    c.close()
    return out
held = [start() for _ in range(4)]
wait_parts(4)
status, body = complete(b'y' * 100)
print('fifth', status, body.get('error', {}).get('code', ''))
held.pop().close()
wait_parts(3)
status, body = complete(b'z' * 100)
print('retry', status, body.get('length', ''))
for c in held:
    c.close()
"#;
    let out = tool_ok(
        "python3",
        &[
            "-B",
            "-c",
            SCRIPT,
            "localhost",
            &hub.addrs.api.port().to_string(),
            path_str(&dev.ca),
            token.trim(),
            path_str(&uploads),
        ],
        Path::new("."),
    );
    assert!(out.contains("fifth 429 too_many_uploads"), "{out}");
    assert!(out.contains("retry 201 100"), "{out}");
}
