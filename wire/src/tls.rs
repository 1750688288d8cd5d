//! What the agent and the controller's command line both need to tell of a
//! failed TLS connection (the `tls` feature, which brings in rustls).

/// The rustls error behind a failed connection, if TLS failed it. rustls's
/// error travels inside `io::Error`s (two, through tokio-rustls and
/// hyper-rustls), whose `source()` skips what they wrap, so each is opened
/// with `get_ref()`.
pub fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref() {
        return Some(r);
    }
    if let Some(r) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).and_then(|i| rustls_error(i)) {
        return Some(r);
    }
    e.source().and_then(rustls_error)
}

/// Why a CA file gave no certificates.
#[derive(Debug)]
pub enum CaFileError {
    /// It could not be read.
    Unreadable(std::io::Error),
    /// A section is not valid PEM.
    NotPem(rustls::pki_types::pem::Error),
    /// It holds no `BEGIN CERTIFICATE` section.
    Empty,
}

/// The certificates of a PEM file (trust roots); other sections (keys)
/// are skipped.
pub fn ca_certificates(path: &std::path::Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, CaFileError> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(CaFileError::Unreadable)?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(CaFileError::NotPem)?;
    if certs.is_empty() {
        return Err(CaFileError::Empty);
    }
    Ok(certs)
}

/// Whether a connection failed because no trusted root vouches for the
/// server's certificate.
pub fn unknown_issuer(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(rustls_error(e), Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)))
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// An error whose `source()` is `inner`, as hyper's are.
    #[derive(Debug)]
    struct Wrapper(io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("request failed")
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_unknown_issuer_is_found_inside_io_errors_and_sources() {
        let untrusted = || rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let twice = io::Error::other(io::Error::other(untrusted()));
        assert!(unknown_issuer(&untrusted()));
        assert!(unknown_issuer(&twice));
        assert!(unknown_issuer(&Wrapper(twice)));

        let expired = io::Error::other(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired));
        assert!(!unknown_issuer(&Wrapper(expired)));
        assert!(!unknown_issuer(&Wrapper(io::Error::from(io::ErrorKind::ConnectionRefused))));
    }
}
