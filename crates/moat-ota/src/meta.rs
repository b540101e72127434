//! Building and signing TUF metadata, Moat's `custom` fields, expiry defaults and names.

use std::collections::HashMap;
use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{Role, Signature, Signed};

use crate::Error;
use crate::keys::SigningKey;

/// TUF specification version written into every role.
pub const SPEC_VERSION: &str = "1.0.31";

/// One day in seconds.
pub const DAY: i64 = 24 * 3600;
/// Default lifetime of root metadata: 365 days.
pub const ROOT_LIFETIME: i64 = 365 * DAY;
/// Default lifetime of targets and `hw-*` metadata: 90 days.
pub const TARGETS_LIFETIME: i64 = 90 * DAY;
/// Lifetime of snapshot metadata (image and director): 7 days.
pub const SNAPSHOT_LIFETIME: i64 = 7 * DAY;
/// Lifetime of timestamp metadata (image and director): 1 day.
pub const TIMESTAMP_LIFETIME: i64 = DAY;

/// Longest target name (`{class}/{name}-{version}`), in bytes.
pub const MAX_TARGET_NAME_LEN: usize = 200;
/// Longest hardware class, in bytes.
pub const MAX_HARDWARE_CLASS_LEN: usize = 64;

/// `now + seconds`, whole seconds (python-tuf re-serializes `expires` without fractions, so
/// signatures only verify on second-precision timestamps).
pub fn expires_at(now: jiff::Timestamp, seconds: i64) -> Result<jiff::Timestamp, Error> {
    let t = now.as_second().saturating_add(seconds);
    jiff::Timestamp::from_second(t).map_err(|e| Error::Invalid(format!("expiry out of range: {e}")))
}

/// The current time in whole seconds.
pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Signs `role` with every key in `keys` (canonical JSON of the `signed` object).
pub fn sign<T: Role>(role: T, keys: &[&SigningKey]) -> Result<Signed<T>, Error> {
    let data = role
        .canonical_form()
        .map_err(|e| Error::Invalid(format!("cannot serialize role: {e}")))?;
    let mut signatures = Vec::with_capacity(keys.len());
    for k in keys {
        let keyid: Decoded<Hex> = unhex(k.id())?.into();
        if signatures.iter().any(|s: &Signature| s.keyid == keyid) {
            continue;
        }
        signatures.push(Signature {
            keyid,
            sig: k.sign(&data).into(),
        });
    }
    Ok(Signed {
        signed: role,
        signatures,
    })
}

/// Adds signatures by `keys` to already signed metadata (threshold signing, root rotation).
pub fn add_signatures<T: Role>(signed: &mut Signed<T>, keys: &[&SigningKey]) -> Result<(), Error> {
    let data = signed
        .signed
        .canonical_form()
        .map_err(|e| Error::Invalid(format!("cannot serialize role: {e}")))?;
    for k in keys {
        let keyid: Decoded<Hex> = unhex(k.id())?.into();
        if signed.signatures.iter().any(|s| s.keyid == keyid) {
            continue;
        }
        signed.signatures.push(Signature {
            keyid,
            sig: k.sign(&data).into(),
        });
    }
    Ok(())
}

/// Serializes signed metadata as it is stored and served: canonical JSON, so the same metadata
/// always gives the same bytes (the hashes in snapshot and timestamp stay valid however often a
/// file is re-serialized).
pub fn to_bytes<T: Serialize>(signed: &Signed<T>) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    signed
        .serialize(&mut ser)
        .map_err(|e| Error::Invalid(format!("cannot serialize: {e}")))?;
    Ok(out)
}

/// Parses signed metadata of role `T`.
pub fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<Signed<T>, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Invalid(format!("{what}: {e}")))
}

/// Hex decoding for key ids.
pub(crate) fn unhex(s: &str) -> Result<Vec<u8>, Error> {
    if !s.len().is_multiple_of(2) {
        return Err(Error::Key(format!("bad hex {s:?}")));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| Error::Key(format!("bad hex {s:?}")))
        })
        .collect()
}

/// Version `n`, or 1 if `n` is 0.
pub fn nz(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN)
}

/// `custom.moat` of an image target, signed offline by the targets or `hw-{class}` role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCustom {
    /// Image name (without version or class).
    pub name: String,
    /// Version, see [`crate::Version`].
    pub version: String,
    /// Hardware class the image is for, `None` for any hardware.
    pub hardware: Option<String>,
    /// Whether devices may install this image over a higher installed version.
    #[serde(default)]
    pub downgrade: bool,
}

/// `custom.moat` of a director target, signed online for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectorCustom {
    /// The device this instruction is for.
    pub device: String,
    /// The device's hardware class as the hub knows it.
    pub hardware: Option<String>,
    /// The image version (copied from the image target).
    pub version: String,
    /// Campaign that assigned it, if any.
    pub campaign: Option<String>,
    /// Whether the device must ask its owner before installing (the campaign was created with
    /// consent required). Absent in metadata signed before the field existed: `false`. Signed
    /// by the online director key like the rest of the instruction: it protects the owner's
    /// schedule, not the image's integrity (the image repository's offline keys do that).
    #[serde(default)]
    pub consent: bool,
}

/// Reads `custom.moat` of a target.
pub fn moat_custom<T: for<'de> Deserialize<'de>>(
    custom: &HashMap<String, serde_json::Value>,
) -> Option<T> {
    custom
        .get("moat")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// Wraps a `custom.moat` value.
pub fn custom_map<T: Serialize>(value: &T) -> Result<HashMap<String, serde_json::Value>, Error> {
    let v = serde_json::to_value(value).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(HashMap::from([("moat".to_owned(), v)]))
}

/// Checks a name or class: ASCII letters, digits, `.`, `_`, `-`, not starting with `.`.
pub fn valid_component(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The target name for an image: `{class}/{name}-{version}` or `{name}-{version}`.
pub fn target_name(name: &str, version: &str, hardware: Option<&str>) -> Result<String, Error> {
    if !valid_component(name, MAX_TARGET_NAME_LEN) {
        return Err(Error::Invalid(format!(
            "image name {name:?}: use letters, digits, '.', '_' and '-'"
        )));
    }
    crate::Version::parse(version).map_err(|e| Error::Invalid(e.to_string()))?;
    let base = format!("{name}-{version}");
    let full = match hardware {
        Some(class) => {
            if !valid_component(class, MAX_HARDWARE_CLASS_LEN) {
                return Err(Error::Invalid(format!(
                    "hardware class {class:?}: use letters, digits, '.', '_' and '-'"
                )));
            }
            format!("{class}/{base}")
        }
        None => base,
    };
    if full.len() > MAX_TARGET_NAME_LEN {
        return Err(Error::Invalid(format!(
            "target name longer than {MAX_TARGET_NAME_LEN} bytes"
        )));
    }
    Ok(full)
}

/// Name of the delegated role for a hardware class.
pub fn hw_role(class: &str) -> String {
    format!("hw-{class}")
}

/// Path of a target file under the targets base URL (TUF consistent snapshot):
/// `{dir}/{sha256}.{basename}`.
pub fn consistent_target_path(name: &str, sha256_hex: &str) -> String {
    match name.rsplit_once('/') {
        Some((dir, base)) => format!("{dir}/{sha256_hex}.{base}"),
        None => format!("{sha256_hex}.{name}"),
    }
}

/// Incremental SHA-256 (for callers hashing an image they stream from disk).
#[derive(Clone)]
pub struct Sha256(aws_lc_rs::digest::Context);

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256")
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
}

impl Sha256 {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest.
    pub fn finish(self) -> [u8; 32] {
        let d = self.0.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn director_custom_without_consent_parses_as_not_required() {
        // Metadata signed before the consent flag existed.
        let old = serde_json::json!({"moat": {"device": "d", "hardware": null,
            "version": "1.0.0", "campaign": "7"}});
        let map: HashMap<String, serde_json::Value> =
            serde_json::from_value(old).unwrap_or_default();
        let parsed: Option<DirectorCustom> = moat_custom(&map);
        assert_eq!(parsed.map(|c| c.consent), Some(false));
        // The flag round-trips.
        let custom = DirectorCustom {
            device: "d".into(),
            hardware: Some("rpi4".into()),
            version: "1.0.0".into(),
            campaign: Some("7".into()),
            consent: true,
        };
        let map = custom_map(&custom).ok();
        assert_eq!(
            map.as_ref().and_then(|m| m["moat"].get("consent").cloned()),
            Some(serde_json::Value::Bool(true))
        );
        assert_eq!(map.as_ref().and_then(moat_custom), Some(custom));
    }
}
