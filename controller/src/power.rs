//! Power control of servers: `manual` (the operator does it), `command`
//! (an argv template, `{action}` = on/off/cycle), `ipmi` (ipmitool over
//! lanplus), `redfish` (`ComputerSystem.Reset` over HTTPS, in Rust).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What to do with the power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Power on.
    On,
    /// Power off.
    Off,
    /// Reset / power cycle.
    Cycle,
}

impl PowerAction {
    /// Lowercase name, as substituted for `{action}`.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycle",
        }
    }
}

/// A power driver's settings, as stored with the server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Power {
    /// Nothing automatic.
    Manual,
    /// Run a command.
    Command {
        /// argv; `{action}` is replaced.
        argv: Vec<String>,
    },
    /// Redfish: `POST …/Actions/ComputerSystem.Reset` with basic auth.
    Redfish {
        /// BMC base URL, `https://bmc.example`.
        url: String,
        /// User.
        user: String,
        /// Password.
        password: String,
        /// System id under `/redfish/v1/Systems/`; default: the first one.
        #[serde(default)]
        system: Option<String>,
        /// Accept the BMC's self-signed certificate.
        #[serde(default)]
        insecure: bool,
    },
    /// `ipmitool -I lanplus`.
    Ipmi {
        /// BMC address.
        host: String,
        /// User.
        user: String,
        /// Password (passed through the environment, not argv).
        password: String,
        /// The ipmitool to run (default: `ipmitool` from PATH).
        #[serde(default)]
        tool: Option<String>,
    },
}

impl std::fmt::Debug for Power {
    // BMC passwords never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Power::Manual => f.write_str("Manual"),
            Power::Command { argv } => f.debug_struct("Command").field("argv", argv).finish(),
            Power::Redfish { url, user, system, insecure, .. } => f
                .debug_struct("Redfish")
                .field("url", url)
                .field("user", user)
                .field("system", system)
                .field("insecure", insecure)
                .finish_non_exhaustive(),
            Power::Ipmi { host, user, tool, .. } => f
                .debug_struct("Ipmi")
                .field("host", host)
                .field("user", user)
                .field("tool", tool)
                .finish_non_exhaustive(),
        }
    }
}

impl Power {
    /// The driver's name (`manual`, `command`, `redfish`, `ipmi`).
    pub fn kind(&self) -> &'static str {
        match self {
            Power::Manual => "manual",
            Power::Command { .. } => "command",
            Power::Redfish { .. } => "redfish",
            Power::Ipmi { .. } => "ipmi",
        }
    }
}

/// How long a power command may take.
const TIMEOUT: Duration = Duration::from_secs(60);

impl Power {
    /// Parses and checks stored settings.
    pub fn from_json(v: &serde_json::Value) -> Result<Power, String> {
        let p: Power = serde_json::from_value(v.clone()).map_err(|e| format!("bad power settings: {e}"))?;
        if let Power::Command { argv } = &p {
            if argv.is_empty() {
                return Err("bad power settings: argv is empty".into());
            }
        }
        Ok(p)
    }

    /// Performs `action`. `Ok(false)` for manual: nothing was done. A
    /// cycle that fails (BMCs refuse to reset a server that is off) is
    /// followed by a power-on.
    pub async fn run(&self, action: PowerAction) -> Result<bool, String> {
        match self.run_once(action).await {
            Err(e) if action == PowerAction::Cycle && !matches!(self, Power::Command { .. }) => {
                tracing::info!(error = %e, "power cycle refused; powering on");
                self.run_once(PowerAction::On).await.map_err(|on| format!("{e}; then power on: {on}"))
            }
            other => other,
        }
    }

    async fn run_once(&self, action: PowerAction) -> Result<bool, String> {
        let (argv, env): (Vec<String>, Vec<(&str, String)>) = match self {
            Power::Manual => return Ok(false),
            Power::Redfish { url, user, password, system, insecure } => {
                if !url.starts_with("https://") && !insecure {
                    return Err(format!(
                        "refusing to send BMC credentials to {url} over plain HTTP (set insecure to allow)"
                    ));
                }
                let rf = redfish::Redfish {
                    base: url.trim_end_matches('/').to_owned(),
                    user,
                    password,
                    insecure: *insecure,
                };
                return tokio::time::timeout(TIMEOUT, rf.reset(system.as_deref(), action))
                    .await
                    .map_err(|_| format!("the BMC at {url} did not answer within {}s", TIMEOUT.as_secs()))?
                    .map(|()| true);
            }
            Power::Command { argv } => (argv.iter().map(|a| a.replace("{action}", action.as_str())).collect(), vec![]),
            Power::Ipmi { host, user, password, tool } => {
                let verb = match action {
                    PowerAction::On => "on",
                    PowerAction::Off => "off",
                    PowerAction::Cycle => "cycle",
                };
                let tool = tool.as_deref().unwrap_or("ipmitool");
                let argv = [tool, "-I", "lanplus", "-H", host, "-U", user, "-E", "chassis", "power", verb];
                (argv.iter().map(|s| s.to_string()).collect(), vec![("IPMI_PASSWORD", password.clone())])
            }
        };
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]).envs(env).kill_on_drop(true);
        let out = tokio::time::timeout(TIMEOUT, cmd.output())
            .await
            .map_err(|_| format!("{} did not finish within {}s", argv[0], TIMEOUT.as_secs()))?
            .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!("{} failed ({}): {}", argv[0], out.status, err.trim()));
        }
        Ok(true)
    }
}

mod redfish {
    //! A minimal Redfish client: find the system, reset it.

    use std::sync::Arc;

    use base64::Engine;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    use super::PowerAction;

    pub(super) struct Redfish<'a> {
        pub base: String,
        pub user: &'a str,
        pub password: &'a str,
        pub insecure: bool,
    }

    /// Accepts any certificate: BMCs ship self-signed ones. Only used when
    /// the operator says `insecure`.
    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    impl Redfish<'_> {
        async fn call(
            &self,
            method: &str,
            path: &str,
            body: Option<serde_json::Value>,
        ) -> Result<serde_json::Value, String> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?;
            let tls = if self.insecure {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCert(provider))).with_no_client_auth()
            } else {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                builder.with_root_certificates(roots).with_no_client_auth()
            };
            let https =
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
            let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.user, self.password));
            let url = format!("{}{path}", self.base);
            let req = http::Request::builder()
                .method(method)
                .uri(&url)
                .header(http::header::AUTHORIZATION, format!("Basic {auth}"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default()))
                .map_err(|e| e.to_string())?;
            let resp = client.request(req).await.map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            if !status.is_success() {
                return Err(format!("{method} {url}: HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim()));
            }
            Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
        }

        pub(super) async fn reset(&self, system: Option<&str>, action: PowerAction) -> Result<(), String> {
            let system = match system {
                Some(s) => format!("/redfish/v1/Systems/{s}"),
                None => {
                    let systems = self.call("GET", "/redfish/v1/Systems", None).await?;
                    systems["Members"][0]["@odata.id"]
                        .as_str()
                        .ok_or("the BMC lists no system under /redfish/v1/Systems")?
                        .to_owned()
                }
            };
            let reset_type = match action {
                PowerAction::On => "On",
                PowerAction::Off => "ForceOff",
                PowerAction::Cycle => "ForceRestart",
            };
            let path = format!("{system}/Actions/ComputerSystem.Reset");
            self.call("POST", &path, Some(serde_json::json!({ "ResetType": reset_type }))).await.map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn command_driver_substitutes_the_action() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let p = Power::from_json(&serde_json::json!({"kind": "command", "argv": ["sh", "-c", format!("echo {{action}} >> {}", log.display())]})).unwrap();
        assert!(p.run(PowerAction::Cycle).await.unwrap());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "cycle\n");
        let bad = Power::from_json(&serde_json::json!({"kind": "command", "argv": ["false"]})).unwrap();
        assert!(bad.run(PowerAction::On).await.unwrap_err().starts_with("false failed"));
        assert!(!Power::Manual.run(PowerAction::Cycle).await.unwrap());
        // ipmitool gets the password from the environment, never argv.
        let tool = dir.path().join("ipmitool");
        std::fs::write(&tool, format!("#!/bin/sh\necho \"$* pw=$IPMI_PASSWORD\" > {}\n", log.display())).unwrap();
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let ipmi = Power::from_json(&serde_json::json!({"kind": "ipmi", "host": "10.0.0.9", "user": "admin", "password": "s3cret", "tool": tool})).unwrap();
        assert!(ipmi.run(PowerAction::Cycle).await.unwrap());
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "-I lanplus -H 10.0.0.9 -U admin -E chassis power cycle pw=s3cret\n"
        );
        assert!(Power::from_json(&serde_json::json!({"kind": "telepathy"})).is_err());
        assert!(!format!("{ipmi:?}").contains("s3cret"), "{ipmi:?}");
    }
}

#[cfg(test)]
mod redfish_tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A fake BMC on 127.0.0.1 recording what it is asked.
    async fn fake_bmc() -> (String, Arc<Mutex<Vec<String>>>) {
        use http_body_util::{BodyExt, Full};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap_or("").to_owned())
                                .unwrap_or_default();
                            let line = format!("{} {} {auth}", req.method(), req.uri().path());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            s.lock().unwrap().push(format!("{line} {}", String::from_utf8_lossy(&body)));
                            let out = if line.starts_with("GET /redfish/v1/Systems ") {
                                r#"{"Members":[{"@odata.id":"/redfish/v1/Systems/1"}]}"#
                            } else {
                                "{}"
                            };
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from(out))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn redfish_finds_the_system_and_resets_it() {
        let (url, seen) = fake_bmc().await;
        let plain = serde_json::json!({"kind": "redfish", "url": url, "user": "admin", "password": "pw"});
        let e = Power::from_json(&plain).unwrap().run(PowerAction::Cycle).await.unwrap_err();
        assert!(e.contains("over plain HTTP"), "{e}");
        assert!(seen.lock().unwrap().is_empty());
        let insecure =
            serde_json::json!({"kind": "redfish", "url": url, "user": "admin", "password": "pw", "insecure": true});
        assert!(Power::from_json(&insecure).unwrap().run(PowerAction::Cycle).await.unwrap());
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0], "GET /redfish/v1/Systems Basic YWRtaW46cHc= ");
        assert_eq!(
            seen[1],
            r#"POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset Basic YWRtaW46cHc= {"ResetType":"ForceRestart"}"#
        );
    }
}
