//! The software inventory the agent reports (retained) on `devices/{id}/ota/inventory`, for
//! the fleet audit: the hardware class, the installed version and the packages a configured
//! file or command lists.
//!
//! The file, or the command's standard output, is JSON: either a list of packages or an
//! object with a `packages` list; each package `{"name": N, "version": V, "purl": "pkg:..."}`
//! (a package URL, <https://github.com/package-url/purl-spec>). Unknown fields are ignored.
//! Everything is checked and bounded before it is published ([`MAX_INVENTORY_SIZE`],
//! [`MAX_INVENTORY_PACKAGES`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::AgentError;
use crate::update::command::{self, CommandLine};

/// Largest inventory read (file or command output), in bytes: 256 KiB.
pub const MAX_INVENTORY_SIZE: usize = 256 * 1024;
/// Most packages reported: 2048.
pub const MAX_INVENTORY_PACKAGES: usize = 2048;
/// Longest package name or version, in bytes: 128.
pub const MAX_PACKAGE_FIELD_LEN: usize = 128;
/// Longest package URL, in bytes: 256 (what the hub accepts).
pub const MAX_PURL_LEN: usize = 256;
/// How long the inventory command may run: 60 s.
pub const INVENTORY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the package list comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventorySource {
    /// A JSON file.
    File(PathBuf),
    /// A command printing JSON.
    Command(CommandLine),
}

/// One package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Package {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its package URL (`pkg:type/namespace/name@version`).
    pub purl: String,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Listing {
    List(Vec<Package>),
    Object { packages: Vec<Package> },
}

/// Parses and checks a package list.
pub fn parse_packages(bytes: &[u8]) -> Result<Vec<Package>, String> {
    if bytes.len() > MAX_INVENTORY_SIZE {
        return Err(format!("larger than {MAX_INVENTORY_SIZE} bytes"));
    }
    let packages = match serde_json::from_slice::<Listing>(bytes) {
        Ok(Listing::List(p) | Listing::Object { packages: p }) => p,
        Err(e) => {
            return Err(format!(
                "not a JSON list of {{\"name\", \"version\", \"purl\"}} packages: {e}"
            ));
        }
    };
    if packages.len() > MAX_INVENTORY_PACKAGES {
        return Err(format!("more than {MAX_INVENTORY_PACKAGES} packages"));
    }
    for p in &packages {
        let printable = |s: &str| !s.chars().any(char::is_control);
        if p.name.is_empty()
            || p.name.len() > MAX_PACKAGE_FIELD_LEN
            || p.version.is_empty()
            || p.version.len() > MAX_PACKAGE_FIELD_LEN
            || !printable(&p.name)
            || !printable(&p.version)
        {
            return Err(format!(
                "package {:?}: name and version must be 1 to {MAX_PACKAGE_FIELD_LEN} \
                 printable bytes",
                p.name.chars().take(64).collect::<String>()
            ));
        }
        if !p.purl.starts_with("pkg:")
            || p.purl.len() > MAX_PURL_LEN
            || !p.purl.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "package {:?}: purl must be a package URL (pkg:...) of at most \
                 {MAX_PURL_LEN} bytes",
                p.name
            ));
        }
    }
    Ok(packages)
}

/// Reads the packages from `source`.
pub(crate) async fn read(source: &InventorySource) -> Result<Vec<Package>, AgentError> {
    let (bytes, from) = match source {
        InventorySource::File(path) => (
            crate::files::read_bounded(path, MAX_INVENTORY_SIZE as u64)?,
            path.display().to_string(),
        ),
        InventorySource::Command(cmd) => {
            let done = command::run(
                "inventory",
                cmd,
                &[],
                &[],
                INVENTORY_TIMEOUT,
                MAX_INVENTORY_SIZE + 1,
            )
            .await?;
            if !done.success {
                return Err(AgentError::Misconfigured(done.failure));
            }
            (done.stdout, format!("the output of {cmd}"))
        }
    };
    parse_packages(&bytes).map_err(|e| AgentError::Misconfigured(format!("inventory {from}: {e}")))
}

/// The inventory message: `{"hardware", "installed", "packages"}`.
pub(crate) fn message(hardware: &str, installed: Option<&str>, packages: &[Package]) -> Vec<u8> {
    serde_json::json!({
        "hardware": hardware,
        "installed": installed,
        "packages": packages,
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_lists_are_checked() {
        let one =
            r#"[{"name":"openssl","version":"3.0.13","purl":"pkg:deb/debian/openssl@3.0.13"}]"#;
        assert_eq!(parse_packages(one.as_bytes()).map(|p| p.len()), Ok(1));
        let obj = format!(r#"{{"packages":{one},"other":1}}"#);
        assert_eq!(parse_packages(obj.as_bytes()).map(|p| p.len()), Ok(1));
        for bad in [
            r#"[{"name":"","version":"1","purl":"pkg:x/y@1"}]"#,
            r#"[{"name":"a","version":"1","purl":"http://x"}]"#,
            r#"[{"name":"a","version":"1"}]"#,
            r#"[{"name":"a\u0007","version":"1","purl":"pkg:x/a@1"}]"#,
            r#"{"pkgs":[]}"#,
        ] {
            assert!(parse_packages(bad.as_bytes()).is_err(), "{bad}");
        }
        let many = format!(
            "[{}]",
            vec![r#"{"name":"a","version":"1","purl":"pkg:x/a@1"}"#; MAX_INVENTORY_PACKAGES + 1]
                .join(",")
        );
        assert!(parse_packages(many.as_bytes()).is_err());
    }
}
