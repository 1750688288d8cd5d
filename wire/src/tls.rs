//! What the agent and the controller's command line both need to tell of a
//! failed TLS connection (the `tls` feature, which brings in rustls).

/// Whether a connection failed because no trusted root vouches for the
/// server's certificate. rustls's error travels inside `io::Error`s (two,
/// through tokio-rustls and hyper-rustls), whose `source()` skips what they
/// wrap, so each is opened with `get_ref()`.
pub fn unknown_issuer(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) = e.downcast_ref() {
        return true;
    }
    if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
        if unknown_issuer(inner) {
            return true;
        }
    }
    e.source().is_some_and(unknown_issuer)
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
