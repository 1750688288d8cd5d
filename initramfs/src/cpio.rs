//! A `newc` ("070701") cpio writer, the format the kernel unpacks into its
//! rootfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Deterministic: entries sorted by path, parents before children, inode
//! numbers assigned in that order, mtime 0, owner root. Two archives of the
//! same content are byte-identical.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with these permission bits.
    Dir {
        /// Permissions, e.g. 0o755.
        perm: u32,
    },
    /// A regular file.
    File {
        /// Permissions.
        perm: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points.
        target: String,
    },
    /// A character device node (`/dev/console` must exist before init
    /// runs for the kernel to give PID 1 a console).
    CharDevice {
        /// Permissions.
        perm: u32,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// An archive being assembled. Paths are relative (`init`, `lib/modules`),
/// without a leading slash.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

fn clean(path: &str) -> String {
    path.trim_matches('/').split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds an entry, and its missing parent directories (0755). A later
    /// entry for the same path replaces the earlier one.
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = clean(path);
        let mut parent = String::new();
        for comp in path.split('/').collect::<Vec<_>>().split_last().map(|(_, p)| p.to_vec()).unwrap_or_default() {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            self.entries.entry(parent.clone()).or_insert(Entry::Dir { perm: 0o755 });
        }
        self.entries.insert(path, entry);
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) {
        self.add(path, Entry::File { perm, data });
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str) {
        self.add(path, Entry::Dir { perm: 0o755 });
    }

    /// Adds a symlink.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.add(path, Entry::Symlink { target: target.to_owned() });
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the archive is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total bytes of file contents.
    pub fn content_bytes(&self) -> u64 {
        self.entries.values().map(|e| if let Entry::File { data, .. } = e { data.len() as u64 } else { 0 }).sum()
    }

    /// Writes the archive, trailer included.
    pub fn write(&self, w: &mut impl Write) -> io::Result<u64> {
        let mut out = Counter { w, n: 0 };
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir { perm } => (S_IFDIR | perm, &[], (0, 0)),
                Entry::File { perm, data } => (S_IFREG | perm, data, (0, 0)),
                Entry::Symlink { target } => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
                Entry::CharDevice { perm, major, minor } => (S_IFCHR | perm, &[], (*major, *minor)),
            };
            let nlink = if matches!(entry, Entry::Dir { .. }) { 2 } else { 1 };
            header(&mut out, ino as u32 + 1, mode, nlink, data.len(), rdev, path)?;
            out.write_all(data)?;
            pad(&mut out)?;
        }
        header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
        Ok(out.n)
    }
}

struct Counter<'w, W: Write> {
    w: &'w mut W,
    n: u64,
}

impl<W: Write> Write for Counter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.w.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

fn pad<W: Write>(out: &mut Counter<'_, W>) -> io::Result<()> {
    let rem = (4 - out.n % 4) % 4;
    out.write_all(&[0u8; 3][..rem as usize])
}

fn header<W: Write>(
    out: &mut Counter<'_, W>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<()> {
    let size = u32::try_from(size).map_err(|_| io::Error::other(format!("{name} is larger than 4 GiB")))?;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
    // devminor, rdevmajor, rdevminor, namesize, check.
    write!(
        out,
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        0,
        0,
        0,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() + 1,
        0
    )?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.file("init", 0o755, b"#!/bin/sh\necho hi\n".to_vec());
        a.file("lib/modules/6.1/kernel/drivers/block/virtio_blk.ko", 0o644, vec![7u8; 5]);
        a.symlink("bin/sh", "busybox");
        a.add("dev/console", Entry::CharDevice { perm: 0o600, major: 5, minor: 1 });
        a.dir("proc");
        a
    }

    #[test]
    fn deterministic_and_sorted() {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        sample().write(&mut x).unwrap();
        // Built in another order: same bytes.
        let mut b = Archive::new();
        b.dir("proc");
        b.add("dev/console", Entry::CharDevice { perm: 0o600, major: 5, minor: 1 });
        b.symlink("bin/sh", "busybox");
        b.file("lib/modules/6.1/kernel/drivers/block/virtio_blk.ko", 0o644, vec![7u8; 5]);
        b.file("/init", 0o755, b"#!/bin/sh\necho hi\n".to_vec());
        b.write(&mut y).unwrap();
        assert_eq!(x, y);
        assert_eq!(x.len() % 4, 0);
        assert!(x.starts_with(b"070701"));
    }

    /// GNU cpio, the oracle, lists and extracts what we wrote.
    #[test]
    fn gnu_cpio_reads_it_back() {
        let mut bytes = Vec::new();
        sample().write(&mut bytes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let mut child = Command::new("cpio")
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("cpio is installed by .ci/run");
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), &bytes).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "cpio {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let list = run(&["-t", "--quiet"]);
        assert_eq!(
            list.lines().collect::<Vec<_>>(),
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/drivers",
                "lib/modules/6.1/kernel/drivers/block",
                "lib/modules/6.1/kernel/drivers/block/virtio_blk.ko",
                "proc"
            ]
        );
        let verbose = run(&["-tv", "--quiet"]);
        assert!(verbose.lines().any(|l| l.starts_with("crw-------") && l.ends_with("dev/console")), "{verbose}");
        run(&["-i", "--quiet", "--no-absolute-filenames", "--make-directories", "--nonmatching", "dev/console"]);
        assert_eq!(std::fs::read(dir.path().join("init")).unwrap(), b"#!/bin/sh\necho hi\n");
        assert_eq!(std::fs::read_link(dir.path().join("bin/sh")).unwrap().to_str(), Some("busybox"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.path().join("init")).unwrap().permissions().mode() & 0o777, 0o755);
    }
}
