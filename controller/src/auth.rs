//! OVHcloud's application credentials, as its SDKs speak them: an
//! *application* (key and secret) and its *consumer keys*, each with access
//! rules, validated by the operator; requests signed with
//! `"$1$" + SHA-1(secret + consumer key + method + URL + body + time)`.
//!
//! This module is the pure part: the signature, the rules and their
//! patterns, source-address restrictions, and every way a signed request is
//! refused, with OVHcloud's status, `errorCode` and words
//! ([`AuthError`]). [`crate::db`] stores credentials (consumer keys and
//! validation tokens only as hashes; application secrets as they are, since
//! checking a signature needs them, in the private database);
//! [`crate::routes::auth`] puts it on the wire.

use std::net::IpAddr;

use axum::http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Seconds a signed request's `X-Ovh-Timestamp` may be off the
/// controller's clock, either way. The SDKs take the time from
/// `/auth/time` first, so only a replay or a broken client is outside it.
pub const SIGNATURE_WINDOW: i64 = 180;
/// Seconds a consumer key requested by `POST /auth/credential` waits for
/// the operator's validation before it expires.
pub const VALIDATION_WINDOW: i64 = 3600;
/// Most rules one credential carries.
pub const MAX_RULES: usize = 64;
/// Longest rule path, in bytes.
pub const MAX_RULE_PATH: usize = 256;
/// Most `allowedIPs` entries of one credential.
pub const MAX_ALLOWED_IPS: usize = 32;
/// Most consumer keys of one application waiting for validation: an
/// application key is no secret (it travels in every request), so what it
/// may create is bounded.
pub const MAX_PENDING: usize = 32;
/// Longest application name, in bytes.
pub const MAX_NAME: usize = 64;
/// Longest `redirection` URL, in bytes.
pub const MAX_REDIRECTION: usize = 2048;

/// An HTTP method a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum RuleMethod {
    /// Reads.
    Get,
    /// Creations and actions.
    Post,
    /// Updates.
    Put,
    /// Deletions.
    Delete,
}

impl RuleMethod {
    /// Every method, as `byoi credentials add` grants by default.
    pub const ALL: [RuleMethod; 4] = [RuleMethod::Get, RuleMethod::Post, RuleMethod::Put, RuleMethod::Delete];

    /// The method as HTTP names it.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleMethod::Get => "GET",
            RuleMethod::Post => "POST",
            RuleMethod::Put => "PUT",
            RuleMethod::Delete => "DELETE",
        }
    }

    /// The rule method of an HTTP method; `HEAD` is a `GET`.
    fn of(m: &Method) -> Option<RuleMethod> {
        match *m {
            Method::GET | Method::HEAD => Some(RuleMethod::Get),
            Method::POST => Some(RuleMethod::Post),
            Method::PUT => Some(RuleMethod::Put),
            Method::DELETE => Some(RuleMethod::Delete),
            _ => None,
        }
    }
}

/// What a credential may call: a method and a path pattern, where `*`
/// stands for any characters, `/` included (`/dedicated/server/*` grants
/// every path below `/dedicated/server/`, not `/dedicated/server` itself),
/// as OVHcloud's access rules do. Paths are those of the API without
/// `/1.0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: RuleMethod,
    /// A path pattern, e.g. `/dedicated/server/*`.
    pub path: String,
}

impl AccessRule {
    /// `METHOD:PATH`, as `byoi credentials add --rule` takes it.
    pub fn parse(s: &str) -> Result<AccessRule, String> {
        let (method, path) = s.split_once(':').ok_or_else(|| format!("Bad rule {s:?}: expected METHOD:PATH"))?;
        let method = match method.to_ascii_uppercase().as_str() {
            "GET" => RuleMethod::Get,
            "POST" => RuleMethod::Post,
            "PUT" => RuleMethod::Put,
            "DELETE" => RuleMethod::Delete,
            _ => return Err(format!("Bad rule {s:?}: the method is one of GET, POST, PUT, DELETE")),
        };
        let rule = AccessRule { method, path: path.to_owned() };
        rule.check()?;
        Ok(rule)
    }

    /// Whether the rule is well-formed: a path from `/`, printable ASCII,
    /// bounded.
    pub fn check(&self) -> Result<(), String> {
        let p = &self.path;
        if !p.starts_with('/') || p.len() > MAX_RULE_PATH || !p.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "Bad access rule path {p:?}: it starts with /, is printable ASCII without spaces, and at most \
                 {MAX_RULE_PATH} bytes"
            ));
        }
        Ok(())
    }

    /// Whether the rule grants `method` on `path`.
    pub fn grants(&self, method: &Method, path: &str) -> bool {
        RuleMethod::of(method) == Some(self.method) && glob(self.path.as_bytes(), path.as_bytes())
    }
}

/// Rules that grant everything: every method on `/*`.
pub fn all_rules() -> Vec<AccessRule> {
    RuleMethod::ALL.iter().map(|&method| AccessRule { method, path: "/*".into() }).collect()
}

/// Checks a credential's rules as they enter: some, not too many, each
/// well-formed.
pub fn check_rules(rules: &[AccessRule]) -> Result<(), String> {
    if rules.is_empty() {
        return Err("A credential needs at least one access rule".into());
    }
    if rules.len() > MAX_RULES {
        return Err(format!("At most {MAX_RULES} access rules per credential"));
    }
    rules.iter().try_for_each(AccessRule::check)
}

/// `pattern` matches all of `s`, `*` matching any run of bytes (greedy
/// with backtracking to the last star: linear in practice, quadratic at
/// worst, on inputs bounded by [`MAX_RULE_PATH`] and the request line).
fn glob(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if p < pattern.len() && pattern[p] == s[i] {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// A network a credential may be used from (`allowedIPs`): an address, or
/// an address and a prefix length (`192.0.2.0/24`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the network. An IPv4-mapped IPv6 address is
    /// taken as the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
                IpAddr::V6(v6) => u128::from(v6),
            }
        };
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let len = u32::from(self.prefix);
        let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
        bits(self.addr) & mask == bits(ip) & mask
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("Bad allowedIPs entry {s:?}: an IP address or network (192.0.2.0/24, 2001:db8::/32)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Cidr, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Checks `allowedIPs` as they enter; `None` (or an empty list) allows
/// every address.
pub fn parse_allowed_ips(ips: Option<&[String]>) -> Result<Option<Vec<Cidr>>, String> {
    let Some(ips) = ips.filter(|ips| !ips.is_empty()) else { return Ok(None) };
    if ips.len() > MAX_ALLOWED_IPS {
        return Err(format!("At most {MAX_ALLOWED_IPS} allowedIPs entries"));
    }
    ips.iter().map(|s| s.parse()).collect::<Result<Vec<Cidr>, String>>().map(Some)
}

/// The signature of a request, as OVHcloud's SDKs compute it:
/// `"$1$" + hex(SHA-1(secret "+" consumer "+" METHOD "+" url "+" body "+" timestamp))`.
pub fn signature(secret: &str, consumer: &str, method: &str, url: &str, body: &[u8], timestamp: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for part in [secret.as_bytes(), consumer.as_bytes(), method.as_bytes(), url.as_bytes(), body] {
        ctx.update(part);
        ctx.update(b"+");
    }
    ctx.update(timestamp.as_bytes());
    let hex: String = ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("$1${hex}")
}

/// Whether a request's `X-Ovh-Timestamp` is within [`SIGNATURE_WINDOW`] of
/// `now`.
pub fn timely(timestamp: &str, now: i64) -> bool {
    timestamp.parse::<i64>().is_ok_and(|t| (t - now).abs() <= SIGNATURE_WINDOW)
}

/// Where a credential stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum CredentialStatus {
    /// Requested (`POST /auth/credential`), waiting for the operator.
    PendingValidation,
    /// Usable.
    Validated,
    /// The operator refused it.
    Refused,
    /// Not validated in time.
    Expired,
}

impl CredentialStatus {
    /// The name it is stored and shown under.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialStatus::PendingValidation => "pendingValidation",
            CredentialStatus::Validated => "validated",
            CredentialStatus::Refused => "refused",
            CredentialStatus::Expired => "expired",
        }
    }

    /// The status stored as `s`.
    pub fn from_name(s: &str) -> Option<CredentialStatus> {
        [Self::PendingValidation, Self::Validated, Self::Refused, Self::Expired].into_iter().find(|v| v.as_str() == s)
    }
}

/// Why a request was not authenticated or not granted, each as OVHcloud
/// answers it: the status, the `errorCode` its SDKs map to their exception
/// classes, the words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Neither an API token nor an application key.
    #[error("You must login first")]
    NoCredential,
    /// An `Authorization: Bearer` token that is not the API token.
    #[error("Invalid API token (Authorization: Bearer …)")]
    BadToken,
    /// An application key that does not exist (or was revoked).
    #[error("Invalid application key")]
    InvalidKey,
    /// An application key without a consumer key.
    #[error("You must login first: this call needs a consumer key (X-Ovh-Consumer)")]
    NoConsumer,
    /// A timestamp missing or outside the window.
    #[error("Query out of time: X-Ovh-Timestamp must be within {SIGNATURE_WINDOW} s of GET /auth/time")]
    QueryTimeOut,
    /// A consumer key that does not exist, or is another application's.
    #[error("This credential does not exist")]
    UnknownCredential,
    /// A consumer key pending validation, refused or expired, or used from
    /// an address its `allowedIPs` exclude.
    #[error("This credential is not valid")]
    CredentialNotValid,
    /// The signature does not match.
    #[error("Invalid signature")]
    InvalidSignature,
    /// The credential's rules do not grant the call.
    #[error("This call has not been granted")]
    NotGranted,
    /// A call only the API token may make (credential management).
    #[error("This call has not been granted: it takes the API token (Authorization: Bearer …)")]
    TokenOnly,
    /// A dashboard session cookie that is unknown, expired or logged out.
    #[error("Your dashboard session has ended: log in again")]
    SessionEnded,
    /// A change made with a session cookie without the session's CSRF
    /// token.
    #[error("This change needs the dashboard session's CSRF token (X-Byoi-Csrf)")]
    NoCsrf,
}

impl AuthError {
    /// The status, and the `errorCode` OVHcloud sends with it.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AuthError::NoCredential | AuthError::BadToken | AuthError::SessionEnded => {
                (StatusCode::UNAUTHORIZED, "NOT_CREDENTIAL")
            }
            AuthError::NoCsrf => (StatusCode::FORBIDDEN, "NOT_GRANTED_CALL"),
            AuthError::InvalidKey => (StatusCode::FORBIDDEN, "INVALID_KEY"),
            AuthError::NoConsumer => (StatusCode::FORBIDDEN, "NOT_CREDENTIAL"),
            AuthError::QueryTimeOut => (StatusCode::BAD_REQUEST, "QUERY_TIME_OUT"),
            AuthError::UnknownCredential | AuthError::CredentialNotValid => {
                (StatusCode::FORBIDDEN, "INVALID_CREDENTIAL")
            }
            AuthError::InvalidSignature => (StatusCode::BAD_REQUEST, "INVALID_SIGNATURE"),
            AuthError::NotGranted | AuthError::TokenOnly => (StatusCode::FORBIDDEN, "NOT_GRANTED_CALL"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_as_the_sdk_computes_it() {
        // python: "$1$" + hashlib.sha1("+".join([s, ck, "GET", url, "", "1700000000"]).encode()).hexdigest()
        let sig = signature("secret", "ck", "GET", "http://127.0.0.1:8080/1.0/dedicated/server", b"", "1700000000");
        assert_eq!(sig, "$1$fa6788b3cf586b6d1d7bbf0c39d44a3b0b6940d5");
    }

    #[test]
    fn rule_patterns() {
        let r = |m: RuleMethod, p: &str| AccessRule { method: m, path: p.into() };
        let all = r(RuleMethod::Get, "/*");
        assert!(all.grants(&Method::GET, "/dedicated/server"));
        assert!(all.grants(&Method::HEAD, "/dedicated/server"));
        assert!(!all.grants(&Method::POST, "/dedicated/server"));
        let below = r(RuleMethod::Get, "/dedicated/server/*");
        assert!(below.grants(&Method::GET, "/dedicated/server/a/task/3"));
        assert!(!below.grants(&Method::GET, "/dedicated/server"));
        assert!(!below.grants(&Method::GET, "/dedicated/serverX"));
        let exact = r(RuleMethod::Post, "/dedicated/server/*/reinstall");
        assert!(exact.grants(&Method::POST, "/dedicated/server/a/reinstall"));
        assert!(exact.grants(&Method::POST, "/dedicated/server/a/b/reinstall"));
        assert!(!exact.grants(&Method::POST, "/dedicated/server/a/reinstall/x"));
        assert!(!exact.grants(&Method::PATCH, "/dedicated/server/a/reinstall"));
        assert!(glob(b"*a*b*", b"xxaxxbxx"));
        assert!(!glob(b"*a*b", b"xxaxxbxx"));
        assert!(glob(b"**", b""));
    }

    #[test]
    fn rules_enter_checked() {
        assert_eq!(AccessRule::parse("get:/dedicated/server/*").unwrap().method, RuleMethod::Get);
        assert!(AccessRule::parse("PATCH:/x").is_err());
        assert!(AccessRule::parse("GET:x").is_err());
        assert!(AccessRule::parse("GET:/a b").is_err());
        assert!(AccessRule::parse("/x").is_err());
        assert!(check_rules(&[]).is_err());
        assert!(check_rules(&vec![all_rules()[0].clone(); MAX_RULES + 1]).is_err());
        assert!(check_rules(&all_rules()).is_ok());
    }

    #[test]
    fn allowed_ips() {
        let c: Cidr = "192.0.2.0/24".parse().unwrap();
        assert!(c.contains("192.0.2.77".parse().unwrap()));
        assert!(c.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!c.contains("192.0.3.1".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("203.0.113.9".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        assert_eq!(parse_allowed_ips(Some(&[])).unwrap(), None);
    }

    #[test]
    fn timestamps_in_the_window() {
        assert!(timely("1000", 1000 + SIGNATURE_WINDOW));
        assert!(!timely("1000", 1001 + SIGNATURE_WINDOW));
        assert!(timely("1180", 1000));
        assert!(!timely("", 1000));
        assert!(!timely("1e3", 1000));
    }
}
