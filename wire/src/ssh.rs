//! SSH for rescue mode: the server's host key, which the controller makes
//! once per server and hands to the rescue agent, and the check that an
//! authorized key is one line of `authorized_keys`.
//!
//! The encodings are RFC 8709 §4 (an Ed25519 public key as the string
//! `ssh-ed25519` then the 32-byte key, each with a `uint32` length, RFC
//! 4251 §5) and OpenSSH's fingerprint: `SHA256:` and the unpadded base64
//! of the SHA-256 of that blob.

use std::fmt;

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::spec::MAX_SSH_KEY;

/// The key type's name on the wire.
pub const ED25519: &str = "ssh-ed25519";

/// An Ed25519 SSH host key: the 32-byte private seed (RFC 8032 §5.1.5) and
/// the public key derived from it. Its `Debug` shows the fingerprint only.
#[derive(Clone, PartialEq, Eq)]
pub struct SshHostKey {
    /// The private seed.
    pub seed: [u8; 32],
    /// The public key.
    pub public: [u8; 32],
}

/// RFC 4251 §5 `string`: a big-endian `uint32` length, then the bytes.
pub fn ssh_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The 32 bytes that `hex`, 64 hexadecimal digits, spells.
const fn hex32(hex: &str) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a lowercase hexadecimal digit"),
        }
    }
    let b = hex.as_bytes();
    assert!(b.len() == 64, "not 64 hexadecimal digits");
    let mut out = [0; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = nibble(b[2 * i]) << 4 | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

impl SshHostKey {
    /// RFC 8032 §7.1, test 1: a published seed and its public key, for
    /// tests. Never a real server's key: everyone has its seed.
    #[doc(hidden)]
    pub const RFC8032_TEST_1: SshHostKey = SshHostKey {
        seed: hex32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
        public: hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
    };

    /// The public key blob (RFC 8709 §4).
    pub fn public_blob(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(51);
        ssh_string(&mut b, ED25519.as_bytes());
        ssh_string(&mut b, &self.public);
        b
    }

    /// The public key as a `known_hosts` / `authorized_keys` line has it:
    /// `ssh-ed25519 AAAA…`.
    pub fn openssh_public(&self) -> String {
        format!("{ED25519} {}", base64::engine::general_purpose::STANDARD.encode(self.public_blob()))
    }

    /// The fingerprint as `ssh` and `ssh-keygen -l` print it: `SHA256:…`.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.public_blob());
        format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
    }
}

impl fmt::Debug for SshHostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshHostKey").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

/// The JSON form: `{"type": "ssh-ed25519", "seed": base64, "public": base64}`.
#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
struct Encoded {
    /// Always `ssh-ed25519`.
    r#type: String,
    /// The 32-byte private seed, base64.
    seed: String,
    /// The 32-byte public key, base64.
    public: String,
}

impl Serialize for SshHostKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        Encoded { r#type: ED25519.into(), seed: b64(&self.seed), public: b64(&self.public) }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SshHostKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let e = Encoded::deserialize(d)?;
        if e.r#type != ED25519 {
            return Err(serde::de::Error::custom(format!("unsupported SSH host key type {:?}", e.r#type)));
        }
        let key32 = |what: &str, s: &str| -> Result<[u8; 32], D::Error> {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| serde::de::Error::custom(format!("the host key's {what} is not 32 bytes of base64")))
        };
        Ok(SshHostKey { seed: key32("seed", &e.seed)?, public: key32("public key", &e.public)? })
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for SshHostKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <Encoded as utoipa::PartialSchema>::schema()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for SshHostKey {
    fn name() -> std::borrow::Cow<'static, str> {
        "SshHostKey".into()
    }
}

/// Why an authorized key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizedKeyError {
    /// Nothing but blanks.
    #[error("the SSH key is empty")]
    Empty,
    /// Longer than [`MAX_SSH_KEY`].
    #[error("the SSH key is longer than {MAX_SSH_KEY} bytes")]
    TooLong,
    /// A line break or another control character: it would add lines (keys,
    /// options) to `authorized_keys`.
    #[error(
        "the SSH key contains a line break or a control character: one public key on one line, as in authorized_keys"
    )]
    NotOneLine,
}

/// Checks that `key` is one line of `authorized_keys`: not empty, not
/// too long, no line break or other control character (which would let one
/// key smuggle in others, or options such as `command=`, on lines of
/// their own).
pub fn check_authorized_key(key: &str) -> Result<(), AuthorizedKeyError> {
    if key.trim().is_empty() {
        return Err(AuthorizedKeyError::Empty);
    }
    if key.len() > MAX_SSH_KEY {
        return Err(AuthorizedKeyError::TooLong);
    }
    // U+2028/U+2029 break lines for some readers too.
    if key.chars().any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}') {
        return Err(AuthorizedKeyError::NotOneLine);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_forms_follow_rfc_8709() {
        let k = SshHostKey::RFC8032_TEST_1;
        let blob = k.public_blob();
        assert_eq!(&blob[..4], &[0, 0, 0, 11]);
        assert_eq!(&blob[4..15], b"ssh-ed25519");
        assert_eq!(&blob[15..19], &[0, 0, 0, 32]);
        assert_eq!(&blob[19..], &k.public);
        assert!(k.openssh_public().starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"), "{}", k.openssh_public());
        let fp = k.fingerprint();
        assert!(fp.starts_with("SHA256:") && fp.len() == 7 + 43 && !fp.ends_with('='), "{fp}");
    }

    #[test]
    fn json_round_trips_and_debug_hides_the_seed() {
        let k = SshHostKey::RFC8032_TEST_1;
        let v = serde_json::to_value(&k).unwrap();
        assert_eq!(v["type"], "ssh-ed25519");
        assert_eq!(v["seed"], "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=");
        assert_eq!(v["public"], "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
        assert_eq!(serde_json::from_value::<SshHostKey>(v).unwrap(), k);
        let debug = format!("{k:?}");
        assert!(debug.contains(&k.fingerprint()) && !debug.contains("seed"), "{debug}");
        let bad = serde_json::json!({"type": "ssh-rsa", "seed": "", "public": ""});
        assert!(serde_json::from_value::<SshHostKey>(bad).unwrap_err().to_string().contains("ssh-rsa"));
        let short = serde_json::json!({"type": "ssh-ed25519", "seed": "AAAA", "public": "AAAA"});
        assert!(serde_json::from_value::<SshHostKey>(short).unwrap_err().to_string().contains("32 bytes"));
    }

    #[test]
    fn authorized_keys_are_single_lines() {
        let ok = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE/TkG/WsQ95ZyZ8dYc2QhzQ3YAeFF+ymXjRnHXsAnoD me@host";
        assert_eq!(check_authorized_key(ok), Ok(()));
        let cases = [
            (format!("{ok}\nssh-ed25519 AAAA evil"), AuthorizedKeyError::NotOneLine),
            (format!("{ok}\r"), AuthorizedKeyError::NotOneLine),
            (format!("command=\"sh\"\u{0} {ok}"), AuthorizedKeyError::NotOneLine),
            (format!("{ok}\u{85}"), AuthorizedKeyError::NotOneLine),
            ("  \t".to_owned(), AuthorizedKeyError::Empty),
            ("".to_owned(), AuthorizedKeyError::Empty),
            ("a".repeat(MAX_SSH_KEY + 1), AuthorizedKeyError::TooLong),
        ];
        for (key, want) in cases {
            assert_eq!(check_authorized_key(&key), Err(want), "{key:?}");
        }
    }
}
