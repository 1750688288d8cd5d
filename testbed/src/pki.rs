//! A private CA and a server certificate it signed, made with the `openssl`
//! command line (`cargo xtask setup` installs it), for tests of HTTPS with
//! an operator's CA.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// CAs made by this process so far, to name each one apart.
static MADE: AtomicU32 = AtomicU32::new(0);

/// Makes, in `dir` (created if need be), a CA (`ca.pem`, key `ca.key`) and a server
/// certificate it signed (`cert.pem`, key `key.pem`) whose subjectAltName
/// is `san`, in OpenSSL's syntax (`DNS:localhost,IP:127.0.0.1`). P-256
/// keys, valid for two days; the server certificate is no CA. Each CA's
/// name is its own, so that to a client trusting another the certificate's
/// issuer is unknown (rustls matches issuers by name: a namesake would fail
/// its signature check instead). Returns the paths of the CA certificate,
/// the server certificate and its key.
pub fn private_ca(dir: &Path, san: &str) -> io::Result<(PathBuf, PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let openssl = |args: &[&str]| -> io::Result<()> {
        let out = Command::new("openssl").args(args).current_dir(dir).output()?;
        if out.status.success() {
            return Ok(());
        }
        Err(io::Error::other(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    };
    let subject = format!("/CN=byoi test CA {}-{}", std::process::id(), MADE.fetch_add(1, Ordering::Relaxed));
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[&["req", "-x509", "-days", "2", "-subj", &subject][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem"]]
            .concat(),
    )?;
    openssl(
        &[&["req", "-subj", "/CN=byoi test server"][..], &ec, &["-keyout", "key.pem", "-out", "req.pem"]].concat(),
    )?;
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"))?;
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-CAcreateserial",
        "-in",
        "req.pem",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ])?;
    Ok((dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openssl as the oracle: the certificate chains to the CA and names
    /// the hosts asked for, and no other.
    #[test]
    fn the_certificate_is_the_cas_and_for_the_names_asked() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (ca, cert, key) = private_ca(&dir.path().join("pki"), "DNS:localhost,IP:10.0.2.2").expect("openssl");
        assert!(key.is_file());
        let check = |args: &[&str]| {
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(&ca)
                .args(args)
                .arg(&cert)
                .output()
                .expect("openssl")
                .status
                .success()
        };
        assert!(check(&["-purpose", "sslserver", "-verify_hostname", "localhost"]));
        assert!(check(&["-verify_ip", "10.0.2.2"]));
        assert!(!check(&["-verify_ip", "127.0.0.1"]));
        assert!(!check(&["-purpose", "sslserver", "-verify_hostname", "example.org"]));
    }

    #[test]
    fn each_ca_has_a_name_of_its_own() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let subject = |name: &str| {
            let (ca, _, _) = private_ca(&dir.path().join(name), "DNS:localhost").expect("openssl");
            let out = Command::new("openssl").args(["x509", "-noout", "-subject", "-in"]).arg(ca).output();
            String::from_utf8(out.expect("openssl").stdout).expect("openssl's output")
        };
        let (ours, theirs) = (subject("ours"), subject("theirs"));
        assert!(ours.contains("byoi test CA"), "{ours}");
        assert_ne!(ours, theirs);
    }
}
