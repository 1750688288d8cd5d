//! `byoi serve`'s configuration file (`/etc/byoi/byoi.toml`, `--config`,
//! `$BYOI_CONFIG`): TOML whose keys are `serve`'s flags (`listen`,
//! `data_dir` or `data-dir`, `agent_timeout`…). Its values become the
//! flags' defaults, so that each setting is read, in this order, from the
//! command line, its `BYOI_*` variable, the file, and the built-in
//! default — and goes through the same parser and the same messages
//! whichever it came from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where the file is looked for when neither `--config` nor
/// `$BYOI_CONFIG` names one; a missing file there is no error.
pub const DEFAULT_PATH: &str = "/etc/byoi/byoi.toml";

/// The variable that names the file.
pub const ENV: &str = "BYOI_CONFIG";

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not TOML.
    #[error("{path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's words.
        message: String,
    },
    /// A key that is no setting.
    #[error("{path}: unknown setting {key:?}; the settings are serve's flags: {known}")]
    Unknown {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The settings there are.
        known: String,
    },
    /// Others may write it: anyone who can would choose what the
    /// controller runs (`power_commands`, `ipmitool`) or whom it trusts.
    #[error("refusing {path}: it is writable by other users than its owner (chmod go-w it)")]
    Writable {
        /// The file.
        path: PathBuf,
    },
    /// It holds a secret others may read.
    #[error("refusing {path}: it holds {keys} and {who} can read it (chmod {chmod} it)")]
    Readable {
        /// The file.
        path: PathBuf,
        /// The secret settings it holds.
        keys: String,
        /// `other users`, or `its group and other users`.
        who: &'static str,
        /// `o-r` or `go-r`.
        chmod: &'static str,
    },
    /// A value that is a table, an array or a date.
    #[error("{path}: {key} must be a string, a number or a boolean")]
    NotScalar {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
}

/// The file `serve` reads, from its arguments (`--config FILE` or
/// `--config=FILE` after `serve`), else `$BYOI_CONFIG`, else
/// [`DEFAULT_PATH`] if it exists; `None` for another command, or when there
/// is none. A file named explicitly must exist (reading it says so).
pub fn path_from(args: &[OsString], env: Option<OsString>) -> Option<PathBuf> {
    let serve = args.iter().skip(1).position(|a| a == "serve")? + 1;
    let mut rest = args[serve + 1..].iter();
    while let Some(a) = rest.next() {
        if a == "--config" {
            return rest.next().map(PathBuf::from);
        }
        if let Some(v) = a.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(PathBuf::from(v));
        }
    }
    if let Some(e) = env.filter(|e| !e.is_empty()) {
        return Some(PathBuf::from(e));
    }
    Path::new(DEFAULT_PATH).is_file().then(|| PathBuf::from(DEFAULT_PATH))
}

/// Who may not read a file that holds a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// Owner and group: `/etc/byoi/byoi.toml` is `root:byoi 0640`.
    OwnerAndGroup,
    /// The owner alone: a person's own file.
    Owner,
}

/// Refuses `path` when others than its owner may write it, or when it
/// holds the secret settings `secrets` and more than `readers` may read it.
pub fn check_permissions(path: &Path, secrets: &[&str], readers: Readers) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(ConfigError::Writable { path: path.to_owned() });
    }
    let (mask, who, chmod) = match readers {
        Readers::OwnerAndGroup => (0o004, "other users", "o-r"),
        Readers::Owner => (0o044, "its group and other users", "go-r"),
    };
    if !secrets.is_empty() && mode & mask != 0 {
        return Err(ConfigError::Readable { path: path.to_owned(), keys: secrets.join(", "), who, chmod });
    }
    Ok(())
}

/// The TOML table in the file at `path`.
pub fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax { path: path.to_owned(), message: e.to_string() })
}

/// The settings of the file at `path`, by setting name (`-` read as `_`),
/// each value as a flag's text; a key not in `known` is refused, and so is
/// a file others may write, or read when it holds one of `secret`.
pub fn load(path: &Path, known: &[&str], secret: &[&str]) -> Result<BTreeMap<String, String>, ConfigError> {
    let table = read_table(path)?;
    let held: Vec<&str> = secret.iter().copied().filter(|s| table.keys().any(|k| k.replace('-', "_") == *s)).collect();
    check_permissions(path, &held, Readers::OwnerAndGroup)?;
    let mut settings = BTreeMap::new();
    for (key, value) in table {
        let name = key.replace('-', "_");
        if !known.contains(&name.as_str()) {
            return Err(ConfigError::Unknown { path: path.to_owned(), key, known: known.join(", ") });
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => return Err(ConfigError::NotScalar { path: path.to_owned(), key }),
        };
        settings.insert(name, text);
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_file_serve_reads() {
        assert_eq!(path_from(&args(&["byoi", "serve", "--config", "/x.toml"]), None), Some("/x.toml".into()));
        assert_eq!(path_from(&args(&["byoi", "serve", "--config=/y.toml"]), Some("/e".into())), Some("/y.toml".into()));
        assert_eq!(path_from(&args(&["byoi", "serve"]), Some("/e.toml".into())), Some("/e.toml".into()));
        assert_eq!(path_from(&args(&["byoi", "servers", "--config", "/x"]), Some("/e".into())), None);
    }

    #[test]
    fn settings_are_flags_text() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("byoi.toml");
        std::fs::write(&f, "listen = \"0.0.0.0:8443\"\nagent-timeout = 60\n").unwrap();
        let s = load(&f, &["listen", "agent_timeout"], &[]).unwrap();
        assert_eq!(s["listen"], "0.0.0.0:8443");
        assert_eq!(s["agent_timeout"], "60");
        std::fs::write(&f, "lisen = \"x\"\n").unwrap();
        let e = load(&f, &["listen"], &[]).unwrap_err().to_string();
        assert!(e.contains("unknown setting \"lisen\"") && e.contains("listen"), "{e}");
        std::fs::write(&f, "listen = [1]\n").unwrap();
        assert!(load(&f, &["listen"], &[]).unwrap_err().to_string().contains("must be a string"));
        std::fs::write(&f, "listen = \n").unwrap();
        assert!(load(&f, &["listen"], &[]).unwrap_err().to_string().contains("not valid TOML"));
        assert!(load(&dir.path().join("none.toml"), &[], &[]).unwrap_err().to_string().starts_with("reading "));
    }

    #[test]
    fn a_file_others_may_write_or_read_secrets_from_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("byoi.toml");
        let known = ["listen", "api_token"];
        let with_mode = |text: &str, mode: u32| {
            std::fs::write(&f, text).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            load(&f, &known, &["api_token"]).map_err(|e| e.to_string())
        };
        let p = f.display();
        assert!(with_mode("listen = \"[::]:80\"\n", 0o644).is_ok());
        assert_eq!(
            with_mode("listen = \"[::]:80\"\n", 0o664).unwrap_err(),
            format!("refusing {p}: it is writable by other users than its owner (chmod go-w it)")
        );
        assert!(with_mode("listen = \"[::]:80\"\n", 0o646).is_err());
        assert_eq!(
            with_mode("api-token = \"s3cret\"\n", 0o644).unwrap_err(),
            format!("refusing {p}: it holds api_token and other users can read it (chmod o-r it)")
        );
        assert!(with_mode("api-token = \"s3cret\"\n", 0o640).is_ok(), "the byoi group reads it");
        assert!(check_permissions(&f, &["token"], Readers::Owner).unwrap_err().to_string().contains("(chmod go-r it)"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_permissions(&f, &["token"], Readers::Owner).is_ok());
    }
}
