//! Ed25519 signing keys (PKCS#8), their TUF public form and key ids, and the hub's online keys.
//!
//! Every key Moat creates is Ed25519: small, fast, and understood by every TUF client
//! (tough, python-tuf). Private keys are PKCS#8 v2 DER; callers store them 0600.

use std::collections::HashMap;
use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::{Ed25519Key, Ed25519Scheme, Key};

use crate::Error;

/// Largest accepted private key file, in bytes (an Ed25519 PKCS#8 document is 83-85 bytes).
pub const MAX_KEY_FILE_BYTES: usize = 4096;

/// An Ed25519 private key. `Debug` shows the key id only; the secret never leaves except
/// through [`SigningKey::pkcs8`].
pub struct SigningKey {
    pkcs8: Vec<u8>,
    pair: Ed25519KeyPair,
    key: Key,
    id: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).finish()
    }
}

impl SigningKey {
    /// Creates a fresh key from the system's random number generator.
    pub fn generate() -> Result<Self, Error> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| Error::Key("could not generate an Ed25519 key".into()))?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// Parses an Ed25519 PKCS#8 (v1 or v2) DER document.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, Error> {
        if der.len() > MAX_KEY_FILE_BYTES {
            return Err(Error::Key(format!(
                "key file larger than {MAX_KEY_FILE_BYTES} bytes"
            )));
        }
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| Error::Key("not an Ed25519 PKCS#8 private key".into()))?;
        let key = ed25519_public(pair.public_key().as_ref());
        let id = key_id(&key)?;
        Ok(Self {
            pkcs8: der.to_vec(),
            pair,
            key,
            id,
        })
    }

    /// The PKCS#8 DER bytes, for writing to a 0600 file.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key in TUF form.
    pub fn public(&self) -> &Key {
        &self.key
    }

    /// The TUF key id (hex SHA-256 of the canonical public key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Signs `msg` (already canonical JSON).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

/// The TUF form of an Ed25519 public key.
pub fn ed25519_public(raw: &[u8]) -> Key {
    Key::Ed25519 {
        keyval: Ed25519Key {
            public: Decoded::<Hex>::from(raw.to_vec()),
            _extra: HashMap::new(),
        },
        scheme: Ed25519Scheme::Ed25519,
        _extra: HashMap::new(),
    }
}

/// The TUF key id of `key` as lowercase hex.
pub fn key_id(key: &Key) -> Result<String, Error> {
    let id = key
        .key_id()
        .map_err(|e| Error::Key(format!("cannot compute key id: {e}")))?;
    Ok(hex(&id))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The hub's five online keys. They sign only what an attacker who owns the hub could sign
/// anyway (freshness and per-device instructions); the offline targets role is what a device
/// trusts for image contents.
#[derive(Debug)]
pub struct OnlineKeys {
    /// Image repository snapshot role.
    pub image_snapshot: SigningKey,
    /// Image repository timestamp role.
    pub image_timestamp: SigningKey,
    /// Director targets role (the per-device instructions).
    pub director_targets: SigningKey,
    /// Director snapshot role.
    pub director_snapshot: SigningKey,
    /// Director timestamp role.
    pub director_timestamp: SigningKey,
}

/// File names of the online keys inside the hub's secrets directory (`DATA/secrets/ota/`).
pub const ONLINE_KEY_FILES: [&str; 5] = [
    "image-snapshot.pk8",
    "image-timestamp.pk8",
    "director-targets.pk8",
    "director-snapshot.pk8",
    "director-timestamp.pk8",
];

impl OnlineKeys {
    /// Five fresh keys.
    pub fn generate() -> Result<Self, Error> {
        Ok(Self {
            image_snapshot: SigningKey::generate()?,
            image_timestamp: SigningKey::generate()?,
            director_targets: SigningKey::generate()?,
            director_snapshot: SigningKey::generate()?,
            director_timestamp: SigningKey::generate()?,
        })
    }

    /// Builds the set from PKCS#8 documents in [`ONLINE_KEY_FILES`] order.
    pub fn from_pkcs8(docs: [&[u8]; 5]) -> Result<Self, Error> {
        Ok(Self {
            image_snapshot: SigningKey::from_pkcs8(docs[0])?,
            image_timestamp: SigningKey::from_pkcs8(docs[1])?,
            director_targets: SigningKey::from_pkcs8(docs[2])?,
            director_snapshot: SigningKey::from_pkcs8(docs[3])?,
            director_timestamp: SigningKey::from_pkcs8(docs[4])?,
        })
    }

    /// The keys in [`ONLINE_KEY_FILES`] order, for writing.
    pub fn as_array(&self) -> [&SigningKey; 5] {
        [
            &self.image_snapshot,
            &self.image_timestamp,
            &self.director_targets,
            &self.director_snapshot,
            &self.director_timestamp,
        ]
    }

    /// The public halves, as served by `GET /api/v1/ota/online-keys`.
    pub fn public(&self) -> OnlinePublicKeys {
        OnlinePublicKeys {
            image_snapshot: self.image_snapshot.public().clone(),
            image_timestamp: self.image_timestamp.public().clone(),
            director_targets: self.director_targets.public().clone(),
            director_snapshot: self.director_snapshot.public().clone(),
            director_timestamp: self.director_timestamp.public().clone(),
        }
    }
}

/// Public online keys in TUF key form; what the ceremony puts into both root roles.
/// JSON: `{"image_snapshot": KEY, "image_timestamp": KEY, "director_targets": KEY,
/// "director_snapshot": KEY, "director_timestamp": KEY}` with KEY a TUF key object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlinePublicKeys {
    /// Image repository snapshot role.
    pub image_snapshot: Key,
    /// Image repository timestamp role.
    pub image_timestamp: Key,
    /// Director targets role.
    pub director_targets: Key,
    /// Director snapshot role.
    pub director_snapshot: Key,
    /// Director timestamp role.
    pub director_timestamp: Key,
}
