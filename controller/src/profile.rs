//! The client's profile file, so that the controller's URL, the API token
//! and its CA stay off command lines (and out of shell history and `ps`):
//! `$BYOI_PROFILE_FILE`, else `$XDG_CONFIG_HOME/byoi/config.toml`, else
//! `~/.config/byoi/config.toml`; a missing default file is no error.
//!
//! ```toml
//! controller = "https://byoi.example:8443"
//! token = "…"                      # then the file must be private (chmod 600)
//! ca_file = "/etc/byoi/ca.pem"
//!
//! [profiles.lab]                   # byoi --profile lab … (or BYOI_PROFILE=lab)
//! controller = "http://10.0.0.1:8080"
//! token_file = "/home/me/.config/byoi/lab-token"
//! ```
//!
//! A named profile's settings replace the top level's; flags and `BYOI_*`
//! variables replace both. A file that others may write, or that holds a
//! token others may read, is refused, as ssh refuses such a key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use byoi_controller::config::{self, Readers};
use serde::Deserialize;

/// The variable naming the file.
pub const FILE_ENV: &str = "BYOI_PROFILE_FILE";

/// What a profile may set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The controller's URL.
    pub controller: Option<String>,
    /// The API token.
    pub token: Option<String>,
    /// A file holding the API token (private to its owner).
    pub token_file: Option<PathBuf>,
    /// Extra trust roots (PEM) for the controller's certificate.
    pub ca_file: Option<PathBuf>,
}

impl Profile {
    /// `self`, each setting `over` has replaced.
    fn under(self, over: Profile) -> Profile {
        Profile {
            controller: over.controller.or(self.controller),
            token: over.token.clone().or(if over.token_file.is_some() { None } else { self.token }),
            token_file: over.token_file.or(if over.token.is_some() { None } else { self.token_file }),
            ca_file: over.ca_file.or(self.ca_file),
        }
    }

    /// The token it gives, from `token` or `token_file`.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        match (&self.token, &self.token_file) {
            (Some(t), _) => Ok(Some(t.clone())),
            (None, Some(f)) => {
                config::check_permissions(f, &["token"], Readers::Owner)?;
                let t =
                    std::fs::read_to_string(f).with_context(|| format!("reading the token file {}", f.display()))?;
                Ok(Some(t.trim().to_owned()))
            }
            (None, None) => Ok(None),
        }
    }
}

/// Where the file is: `$BYOI_PROFILE_FILE` (which must exist), else the XDG
/// place (which may not).
fn path() -> Option<(PathBuf, bool)> {
    if let Some(f) = std::env::var_os(FILE_ENV).filter(|f| !f.is_empty()) {
        return Some((PathBuf::from(f), true));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
    Some((base.join("byoi/config.toml"), false))
}

/// The profile `name` (else the top level) of the profile file, if any.
pub fn load(name: Option<&str>) -> anyhow::Result<Profile> {
    match path() {
        Some((path, named)) if named || path.is_file() => read(&path, name),
        _ => match name {
            Some(name) => anyhow::bail!(
                "no profile {name:?}: there is no profile file (${FILE_ENV} or ~/.config/byoi/config.toml)"
            ),
            None => Ok(Profile::default()),
        },
    }
}

/// The profile `name` (else the top level) of the file at `path`.
pub fn read(path: &Path, name: Option<&str>) -> anyhow::Result<Profile> {
    let mut table = config::read_table(path)?;
    let profiles = match table.remove("profiles") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => anyhow::bail!("{}: profiles is a table of [profiles.NAME] tables", path.display()),
    };
    let parse = |what: &str, t: toml::Table| -> anyhow::Result<Profile> {
        toml::Value::Table(t).try_into().with_context(|| format!("{}: {what}", path.display()))
    };
    let base = parse("the top level", table)?;
    let mut named: BTreeMap<String, Profile> = BTreeMap::new();
    for (n, v) in profiles {
        let toml::Value::Table(t) = v else { anyhow::bail!("{}: profiles.{n} is not a table", path.display()) };
        named.insert(n.clone(), parse(&format!("profiles.{n}"), t)?);
    }
    let held: Vec<&str> = std::iter::once(&base)
        .chain(named.values())
        .any(|p| p.token.is_some())
        .then_some("token")
        .into_iter()
        .collect();
    config::check_permissions(path, &held, Readers::Owner)?;
    match name {
        None => Ok(base),
        Some(n) => match named.remove(n) {
            Some(p) => Ok(base.under(p)),
            None => anyhow::bail!(
                "{}: no profile {n:?} (it has: {})",
                path.display(),
                if named.is_empty() { "none".to_owned() } else { named.keys().cloned().collect::<Vec<_>>().join(", ") }
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let f = dir.join("config.toml");
        std::fs::write(&f, text).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn named_profiles_replace_the_top_level() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("lab-token");
        std::fs::write(&token_file, "lab-secret\n").unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = file(
            dir.path(),
            &format!(
                "controller = \"https://byoi.example\"\ntoken = \"top\"\nca_file = \"/etc/byoi/ca.pem\"\n\
                 [profiles.lab]\ncontroller = \"http://10.0.0.1:8080\"\ntoken_file = \"{}\"\n",
                token_file.display()
            ),
            0o600,
        );
        let top = read(&f, None).unwrap();
        assert_eq!(top.controller.as_deref(), Some("https://byoi.example"));
        assert_eq!(top.token().unwrap().as_deref(), Some("top"));
        let lab = read(&f, Some("lab")).unwrap();
        assert_eq!(lab.controller.as_deref(), Some("http://10.0.0.1:8080"));
        assert_eq!(lab.token().unwrap().as_deref(), Some("lab-secret"), "its token_file replaces the top token");
        assert_eq!(lab.ca_file.as_deref(), Some(Path::new("/etc/byoi/ca.pem")), "kept from the top level");
        let e = read(&f, Some("prod")).unwrap_err().to_string();
        assert!(e.ends_with("no profile \"prod\" (it has: lab)"), "{e}");
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = lab.token().unwrap_err().to_string();
        assert!(e.contains("holds token and its group and other users can read it (chmod go-r it)"), "{e}");
    }

    #[test]
    fn secrets_need_a_private_file_and_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "token = \"s\"\n", 0o644);
        let e = format!("{:#}", read(&f, None).unwrap_err());
        assert!(e.contains("holds token and its group and other users can read it (chmod go-r it)"), "{e}");
        let f = file(dir.path(), "controller = \"http://c\"\n", 0o644);
        assert!(read(&f, None).is_ok(), "no secret, readable is fine");
        let f = file(dir.path(), "controller = \"http://c\"\n", 0o666);
        assert!(format!("{:#}", read(&f, None).unwrap_err()).contains("writable by other users"));
        let f = file(dir.path(), "controler = \"http://c\"\n", 0o600);
        let e = format!("{:#}", read(&f, None).unwrap_err());
        assert!(e.contains("the top level") && e.contains("unknown field `controler`"), "{e}");
        let f = file(dir.path(), "[profiles.lab]\ntokn = \"x\"\n", 0o600);
        assert!(format!("{:#}", read(&f, Some("lab")).unwrap_err()).contains("profiles.lab"));
    }
}
