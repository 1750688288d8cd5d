//! The OVA manifest (`SHA256(file)= hex` lines, one per member) and the check
//! of the members' digests, computed as they streamed, against it.

use std::collections::BTreeMap;

use super::{clean_name, corrupt, unsupported, Digests, MAX_MEMBERS};
use crate::checksum::{to_hex, Algorithm, Hasher};
use crate::error::{DeployError, Result};

/// A manifest: `SHA256(disk1.vmdk)= 0123…` per member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Member name → algorithm and lowercase hex digest.
    pub entries: BTreeMap<String, (Algorithm, String)>,
}

impl Manifest {
    /// Parses a manifest (SHA1, SHA256 or SHA512 lines).
    pub fn parse(text: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(text).map_err(|_| corrupt("the manifest is not UTF-8 text"))?;
        let mut entries = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            // `SHA256(file)= hex` (ovftool, OpenSSL) or `SHA256 (file) =
            // hex` (VirtualBox).
            let bad = || corrupt(format!("manifest line {} is not ALGO(file)= digest: {line:?}", n + 1));
            let (algo, rest) = line.split_once('(').ok_or_else(bad)?;
            let (name, tail) = rest.rsplit_once(')').ok_or_else(bad)?;
            let digest = tail.trim_start().strip_prefix('=').ok_or_else(bad)?;
            let algo = match algo.trim().to_ascii_uppercase().as_str() {
                "SHA1" => Algorithm::Sha1,
                "SHA256" => Algorithm::Sha256,
                "SHA512" => Algorithm::Sha512,
                other => {
                    return Err(unsupported(format!("the manifest uses {other} (SHA1, SHA256 and SHA512 are known)")))
                }
            };
            let digest = digest.trim().to_ascii_lowercase();
            if digest.len() != algo.digest_len() * 2 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(corrupt(format!("manifest line {}: {digest:?} is not a {} digest", n + 1, algo.name())));
            }
            if entries.insert(clean_name(name), (algo, digest)).is_some() {
                return Err(corrupt(format!("the manifest lists {name} twice")));
            }
            if entries.len() > MAX_MEMBERS {
                return Err(unsupported(format!("the manifest lists more than {MAX_MEMBERS} files")));
            }
        }
        Ok(Manifest { entries })
    }

    /// Checks the digests of the members `seen` (computed as they streamed,
    /// `digests`) and of the descriptor `ovf_name` (whose bytes are
    /// `ovf_bytes`) against the manifest; returns the members verified.
    pub(super) fn check(
        &self,
        ovf_name: &str,
        ovf_bytes: &[u8],
        seen: &[String],
        digests: &BTreeMap<String, Digests>,
    ) -> Result<Vec<String>> {
        let mut verified = Vec::new();
        for (name, (algo, expected)) in &self.entries {
            let actual = if *name == ovf_name {
                let mut h = Hasher::new(*algo);
                h.update(ovf_bytes);
                to_hex(&h.finish())
            } else if !seen.contains(name) {
                return Err(corrupt(format!("the manifest lists {name}, which the archive lacks")));
            } else {
                let found = digests.get(name).and_then(|d| d.iter().find(|(a, _)| a == algo));
                match found {
                    Some((_, d)) => to_hex(d),
                    None => {
                        return Err(unsupported(format!(
                            "the manifest comes after {name} and uses {}, which was not computed while it streamed (SHA1 and SHA256 are); put the manifest right after the .ovf",
                            algo.name().to_ascii_uppercase()
                        )))
                    }
                }
            };
            if actual != *expected {
                return Err(DeployError::ManifestMismatch {
                    member: name.clone(),
                    algo: algo.name(),
                    actual,
                    expected: expected.clone(),
                });
            }
            verified.push(name.clone());
        }
        for name in seen {
            // The manifest does not list itself, nor the certificate that
            // signs it.
            let lower = name.to_ascii_lowercase();
            if !self.entries.contains_key(name) && !lower.ends_with(".mf") && !lower.ends_with(".cert") {
                tracing::warn!(member = %name, "the manifest does not list this member; it is not verified");
            }
        }
        Ok(verified)
    }

    /// The error for member `name`, which the manifest must list and does
    /// not.
    pub(super) fn unlisted(&self, name: &str) -> DeployError {
        let listed: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        corrupt(format!(
            "the manifest does not list {name}, which would go unverified (it lists: {})",
            listed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_parse_and_refuse_clearly() {
        let sha1 = "a".repeat(40);
        let sha256 = "B".repeat(64);
        let text = format!("SHA1(vm.ovf)= {sha1}\n\nSHA256(./disk 1.vmdk)={sha256}\r\n");
        let m = Manifest::parse(text.as_bytes()).unwrap();
        assert_eq!(m.entries["vm.ovf"], (Algorithm::Sha1, sha1.clone()));
        assert_eq!(m.entries["disk 1.vmdk"], (Algorithm::Sha256, sha256.to_lowercase()));
        for (text, want) in [
            (format!("MD5(a)= {}", "0".repeat(32)), "unsupported ova image: the manifest uses MD5"),
            ("SHA1(a)= 1234".to_owned(), "corrupt ova image: manifest line 1: \"1234\" is not a sha1 digest"),
            ("hello".to_owned(), "corrupt ova image: manifest line 1 is not ALGO(file)= digest"),
            (format!("SHA1(a)= {sha1}\nSHA1(a)= {sha1}"), "corrupt ova image: the manifest lists a twice"),
        ] {
            let e = Manifest::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }
}
