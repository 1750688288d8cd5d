//! The data directory holds the database (BMC passwords, image URLs with
//! their signatures, `httpHeader` secrets, user data) and the API token:
//! only the controller's user may read it. [`prepare`] creates it 0700, or
//! takes group and other access away from it and from the files in it when
//! an operator (or an older release) left them open, and logs each repair;
//! [`private_umask`] makes every file created afterwards private too.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Group and other permission bits: none may be set on the data directory
/// or its files.
const GROUP_OTHER: u32 = 0o077;
/// The data directory's mode when the controller creates it.
const DIR_MODE: u32 = 0o700;

/// A data directory that cannot be made private.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", path.display())]
pub struct DataDirError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// A permission repaired by [`prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// The directory or file.
    pub path: PathBuf,
    /// Its mode before (permission bits).
    pub was: u32,
    /// Its mode now.
    pub now: u32,
}

/// Sets the process's umask to 077, so that every file the controller
/// creates from now on is private: SQLite's database, `-wal`, `-shm` and
/// journal files (SQLite asks for 0644 and gives the WAL and SHM the
/// database's mode, both under the umask), the API token, and whatever a
/// later release adds. Process-wide, set once at `serve` start.
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(GROUP_OTHER as nix::libc::mode_t));
}

/// Creates `dir` (mode 0700) or repairs it: the directory and every regular
/// file directly in it lose group and other access. Subdirectories (the
/// artifacts, public anyway) and symbolic links are left alone; the
/// directory's own mode already keeps others out of them. Returns what was
/// repaired, each also logged at warn.
pub fn prepare(dir: &Path) -> Result<Vec<Repaired>, DataDirError> {
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(failed("create", dir))?;
    let mut repaired = Vec::new();
    repaired.extend(make_private(dir)?);
    for entry in std::fs::read_dir(dir).map_err(failed("list", dir))? {
        let path = entry.map_err(failed("list", dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(failed("inspect", &path))?;
        if meta.file_type().is_file() {
            repaired.extend(make_private(&path)?);
        }
    }
    for r in &repaired {
        tracing::warn!("{} was open to group or others ({:o}): made it {:o}", r.path.display(), r.was, r.now);
    }
    Ok(repaired)
}

/// A [`DataDirError`] of `action` on `path`, from its I/O error.
fn failed<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> DataDirError + 'p {
    move |source| DataDirError { action, path: path.to_owned(), source }
}

/// Takes group and other access from `path`, if it has any.
fn make_private(path: &Path) -> Result<Option<Repaired>, DataDirError> {
    let was = std::fs::metadata(path).map_err(failed("inspect", path))?.permissions().mode() & 0o7777;
    if was & GROUP_OTHER == 0 {
        return Ok(None);
    }
    let now = was & !GROUP_OTHER;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(now)).map_err(failed("change the mode of", path))?;
    Ok(Some(Repaired { path: path.to_owned(), was, now }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_data_directory_is_private() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("byoi");
        assert_eq!(prepare(&dir).unwrap(), []);
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn an_open_data_directory_and_its_files_are_repaired_and_its_subdirectories_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let set = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        for f in ["byoi.sqlite", "byoi.sqlite-wal", "api-token"] {
            std::fs::write(dir.join(f), "x").unwrap();
            set(&dir.join(f), 0o644);
        }
        std::fs::write(dir.join("private"), "x").unwrap();
        set(&dir.join("private"), 0o600);
        std::fs::create_dir(dir.join("artifacts")).unwrap();
        set(&dir.join("artifacts"), 0o755);
        set(dir, 0o755);

        let mut repaired = prepare(dir).unwrap();
        repaired.sort_by(|a, b| a.path.cmp(&b.path));
        let expected: Vec<Repaired> = [dir.to_owned()]
            .into_iter()
            .chain(["api-token", "byoi.sqlite", "byoi.sqlite-wal"].map(|f| dir.join(f)))
            .map(|path| Repaired {
                was: if path == dir { 0o755 } else { 0o644 },
                now: if path == dir { 0o700 } else { 0o600 },
                path,
            })
            .collect();
        assert_eq!(repaired, expected);
        assert_eq!(mode(&dir.join("private")), 0o600);
        assert_eq!(mode(&dir.join("artifacts")), 0o755);
        assert_eq!(prepare(dir).unwrap(), [], "nothing left to repair");
    }
}
