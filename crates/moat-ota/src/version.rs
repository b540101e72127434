//! Image versions: dotted numbers with an optional `-pre` suffix, compared by semver precedence
//! (`1.2` = `1.2.0` < `1.10.0`; `1.0.0-rc.1` < `1.0.0`).

use std::cmp::Ordering;
use std::fmt;

/// Longest accepted version string, in bytes.
pub const MAX_VERSION_LEN: usize = 64;
/// Most dotted components in the numeric part of a version.
pub const MAX_VERSION_COMPONENTS: usize = 8;

/// A parsed image version. Construct with [`Version::parse`]; `Display` gives back the input.
/// Equality is precedence, like the order: `1.2 == 1.2.0` (a device with `1.2` installed is
/// offered `1.2.0`: already installed, not an upgrade).
#[derive(Debug, Clone)]
pub struct Version {
    text: String,
    numbers: Vec<u64>,
    pre: Option<String>,
}

/// Why a version string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid version {0:?}: use dotted numbers with an optional -suffix, e.g. 1.4.2 or 2.0.0-rc.1"
)]
pub struct VersionError(pub String);

impl Version {
    /// Parses `1`, `1.2.3`, `1.2.3-rc.1`; letters, digits, `.` and `-` only in the suffix.
    pub fn parse(text: &str) -> Result<Self, VersionError> {
        let err = || VersionError(text.chars().take(MAX_VERSION_LEN).collect());
        if text.is_empty() || text.len() > MAX_VERSION_LEN {
            return Err(err());
        }
        let (main, pre) = match text.split_once('-') {
            Some((m, p)) => (m, Some(p)),
            None => (text, None),
        };
        let mut numbers = Vec::new();
        for part in main.split('.') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || part.len() > 18 {
                return Err(err());
            }
            numbers.push(part.parse::<u64>().map_err(|_| err())?);
        }
        if numbers.len() > MAX_VERSION_COMPONENTS {
            return Err(err());
        }
        if let Some(p) = pre
            && (p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            return Err(err());
        }
        Ok(Self {
            text: text.to_owned(),
            numbers,
            pre: pre.map(str::to_owned),
        })
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn cmp_pre(a: &str, b: &str) -> Ordering {
    let mut xs = a.split('.');
    let mut ys = b.split('.');
    loop {
        match (xs.next(), ys.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.numbers.len().max(other.numbers.len());
        for i in 0..n {
            let a = self.numbers.get(i).copied().unwrap_or(0);
            let b = other.numbers.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                ord => return ord,
            }
        }
        match (&self.pre, &other.pre) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(a), Some(b)) => cmp_pre(a, b),
        }
    }
}

// By hand so that `==` agrees with `Ord` (the derived one compared the text: `1.2 != 1.2.0`
// although neither is less, which broke `Ord`'s contract and the verifier's
// already-installed check).
impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("a valid version")
    }

    #[test]
    fn precedence() {
        assert!(v("1.2") < v("1.10.0"));
        assert_eq!(v("1.2").cmp(&v("1.2.0")), Ordering::Equal);
        assert!(v("1.0.0-rc.1") < v("1.0.0"));
        assert!(v("1.0.0-rc.2") < v("1.0.0-rc.10"));
        assert!(v("1.0.0-alpha") < v("1.0.0-beta"));
        assert!(v("2") > v("1.99.99"));
    }

    /// Found by the `ota_version` fuzz target: `==` compared the text while `cmp` compared
    /// precedence, so `1.2` and `1.2.0` were neither equal nor ordered.
    #[test]
    fn equality_is_precedence() {
        for (a, b) in [
            ("1.2", "1.2.0"),
            ("1.0.0-rc.1", "1.0-rc.01"),
            ("3", "3.0.0.0"),
        ] {
            assert_eq!(v(a), v(b), "{a} == {b}");
            assert_eq!(v(a).cmp(&v(b)), Ordering::Equal);
            assert_eq!(v(a).to_string(), a, "Display keeps the text");
        }
        assert_ne!(v("1.2"), v("1.2.1"));
        assert_ne!(v("1.2"), v("1.2-rc.1"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "a.b", "1..2", "1.2-", "1.2-ü", "-1", "1 .2"] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
        assert!(Version::parse(&"1.".repeat(40)).is_err());
    }
}
