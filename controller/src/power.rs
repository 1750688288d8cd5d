//! Power control of servers: `manual` (the operator does it), `command`
//! (a command the controller's own configuration names, `{action}` =
//! on/off/cycle/status), `ipmi` (ipmitool over lanplus), `redfish`
//! (`ComputerSystem.Reset`, `PowerState` and `Boot` over HTTPS, in Rust).
//!
//! Each driver does three things: an action ([`Power::run`]), the state
//! ([`Power::status`]), and, where the BMC can, a one-time network boot
//! ([`Power::netboot_once`]: IPMI `chassis bootdev pxe`, Redfish
//! `BootSourceOverrideTarget=Pxe` once), so that a deploy reaches the agent
//! even on a server whose disk comes first in its boot order.
//!
//! **What the API may make the controller run:** nothing it names itself.
//! A `command` driver refers by name to an argv in the file the operator of
//! the controller gave `byoi serve --power-commands`, and the ipmitool run
//! is `byoi serve --ipmitool`'s; the API supplies names, addresses and
//! credentials, never a program or an argument list. Children start with
//! an empty environment plus a fixed `PATH` (and, for ipmitool, the
//! password in `IPMI_PASSWORD`), so the controller's own environment
//! (tokens, proxies, `LD_PRELOAD`) never reaches them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use byoi_wire::BootMode;
use serde::{Deserialize, Serialize};

/// What to do with the power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
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

/// A server's power, as its driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    /// On (or powering on).
    On,
    /// Off (or powering off).
    Off,
    /// Manual power: byoi cannot tell.
    Unknown,
}

impl PowerState {
    /// Reads a driver's report: its last word, `on` or `off` in any case
    /// (ipmitool's `Chassis Power is on`, a command's `off`, Redfish's
    /// `PowerState`, where `PoweringOn`/`PoweringOff` count as where they
    /// are going).
    fn parse(driver: &str, text: &str) -> Result<PowerState, String> {
        match text.split_whitespace().last().map(str::to_ascii_lowercase).as_deref() {
            Some("on" | "poweringon") => Ok(PowerState::On),
            Some("off" | "poweringoff") => Ok(PowerState::Off),
            _ => {
                let shown: String = text.trim().chars().take(80).collect();
                Err(format!("the {driver} driver reported the power as {shown:?}, neither on nor off"))
            }
        }
    }
}

/// What a driver is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// On, off or cycle.
    Act(PowerAction),
    /// The power state.
    Status,
    /// Boot from the network once, in this firmware's mode if known.
    NetbootOnce(Option<BootMode>),
}

impl Op {
    /// `{action}` for a command driver.
    fn as_str(self) -> &'static str {
        match self {
            Op::Act(a) => a.as_str(),
            Op::Status => "status",
            Op::NetbootOnce(_) => "netboot",
        }
    }
}

/// The `PATH` children get: the system's directories, not the controller's
/// `PATH` (which a service manager or a shell may have set to anything).
pub const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The power drivers the controller's operator configured: the programs the
/// API may have the controller run, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerConfig {
    /// Named argv templates (`byoi serve --power-commands`); `{action}` and
    /// `{server}` are replaced in every word.
    pub commands: BTreeMap<String, Vec<String>>,
    /// The ipmitool to run (`byoi serve --ipmitool`).
    pub ipmitool: PathBuf,
}

impl Default for PowerConfig {
    /// No command, `ipmitool` from [`CHILD_PATH`].
    fn default() -> Self {
        PowerConfig { commands: BTreeMap::new(), ipmitool: PathBuf::from("ipmitool") }
    }
}

/// Why `--power-commands` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PowerConfigError {
    /// The file cannot be read.
    #[error("cannot read power commands from {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Others may write it: anyone who can would choose what the
    /// controller runs.
    #[error("refusing power commands from {path}: it is writable by other users than its owner (chmod go-w it)")]
    Writable {
        /// The file.
        path: PathBuf,
    },
    /// Not a JSON object of argv arrays.
    #[error("power commands in {path} are not a JSON object of name: [program, argument…]")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A name the API could not refer to.
    #[error("power command name {name:?} in {path}: {rule}", rule = crate::model::NAME_RULE)]
    BadName {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// An empty argv or program.
    #[error("power command {name:?} in {path} has no program")]
    NoProgram {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
}

impl PowerConfig {
    /// Reads the named commands from `commands` (a JSON object, name →
    /// argv; none without it) and takes `ipmitool` (default: `ipmitool`
    /// from [`CHILD_PATH`]).
    pub fn load(commands: Option<&Path>, ipmitool: Option<PathBuf>) -> Result<PowerConfig, PowerConfigError> {
        let mut cfg = PowerConfig::default();
        if let Some(tool) = ipmitool {
            cfg.ipmitool = tool;
        }
        let Some(path) = commands else { return Ok(cfg) };
        let read = |source| PowerConfigError::Read { path: path.to_owned(), source };
        let meta = std::fs::metadata(path).map_err(read)?;
        if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o022 != 0 {
            return Err(PowerConfigError::Writable { path: path.to_owned() });
        }
        let text = std::fs::read(path).map_err(read)?;
        cfg.commands = serde_json::from_slice(&text)
            .map_err(|source| PowerConfigError::Parse { path: path.to_owned(), source })?;
        for (name, argv) in &cfg.commands {
            if !crate::model::valid_name(name) {
                return Err(PowerConfigError::BadName { path: path.to_owned(), name: name.clone() });
            }
            if argv.first().is_none_or(String::is_empty) {
                return Err(PowerConfigError::NoProgram { path: path.to_owned(), name: name.clone() });
            }
        }
        Ok(cfg)
    }
}

/// The error for a command name the configuration does not have.
fn unknown_command(name: &str) -> String {
    format!("no power command named {name:?} in the controller's configuration (byoi serve --power-commands)")
}

/// A power driver's settings, as stored with the server and as the API
/// gives them (`POST /dedicated/server`'s `power`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredPower", into = "StoredPower")]
pub enum Power {
    /// Nothing automatic.
    Manual,
    /// Run the configured command `name`.
    Command {
        /// Its name in the controller's configuration.
        name: String,
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
        system: Option<String>,
        /// Accept the BMC's self-signed certificate.
        insecure: bool,
    },
    /// `ipmitool -I lanplus`, the configured ipmitool.
    Ipmi {
        /// BMC address.
        host: String,
        /// BMC's RMCP+ UDP port; default ipmitool's, 623.
        port: Option<u16>,
        /// RMCP+ cipher suite (`-C`); default: ipmitool asks the BMC for
        /// the best one (BMCs that do not answer that cost 10 s a call).
        cipher: Option<u8>,
        /// User.
        user: String,
        /// Password (passed through the environment, not argv).
        password: String,
    },
    /// A command driver stored by byoi 0.1, whose argv came from the API.
    /// It is never run: every action fails, telling the operator to
    /// register the server again with a named command. Kept as stored.
    RetiredArgv {
        /// The stored argv, kept so the row reads back as it was.
        argv: Vec<String>,
    },
}

/// `Power` as serde reads and writes it: what the API accepts, plus the
/// 0.1 forms stored rows may hold (`command` with an `argv`, `ipmi` with a
/// `tool`), which [`Power::from_json`] refuses from the API.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum StoredPower {
    Manual,
    Command {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        argv: Option<Vec<String>>,
    },
    Redfish {
        url: String,
        user: String,
        password: String,
        #[serde(default)]
        system: Option<String>,
        #[serde(default)]
        insecure: bool,
    },
    Ipmi {
        host: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cipher: Option<u8>,
        user: String,
        password: String,
        #[serde(default, skip_serializing)]
        tool: Option<String>,
    },
}

impl TryFrom<StoredPower> for Power {
    type Error = String;

    fn try_from(p: StoredPower) -> Result<Power, String> {
        Ok(match p {
            StoredPower::Manual => Power::Manual,
            StoredPower::Command { name: Some(name), argv: None } => Power::Command { name },
            StoredPower::Command { name: None, argv: Some(argv) } => Power::RetiredArgv { argv },
            StoredPower::Command { .. } => return Err("a command driver takes a name".into()),
            StoredPower::Redfish { url, user, password, system, insecure } => {
                Power::Redfish { url, user, password, system, insecure }
            }
            // 0.1's `tool` came from the API: the configured ipmitool runs
            // instead (see `Power::from_json` for the API's side).
            StoredPower::Ipmi { host, port, cipher, user, password, tool: _ } => {
                Power::Ipmi { host, port, cipher, user, password }
            }
        })
    }
}

impl From<Power> for StoredPower {
    fn from(p: Power) -> StoredPower {
        match p {
            Power::Manual => StoredPower::Manual,
            Power::Command { name } => StoredPower::Command { name: Some(name), argv: None },
            Power::RetiredArgv { argv } => StoredPower::Command { name: None, argv: Some(argv) },
            Power::Redfish { url, user, password, system, insecure } => {
                StoredPower::Redfish { url, user, password, system, insecure }
            }
            Power::Ipmi { host, port, cipher, user, password } => {
                StoredPower::Ipmi { host, port, cipher, user, password, tool: None }
            }
        }
    }
}

impl std::fmt::Debug for Power {
    // BMC passwords never reach a log line, nor a retired argv (0.1 put
    // PDU credentials there).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Power::Manual => f.write_str("Manual"),
            Power::Command { name } => f.debug_struct("Command").field("name", name).finish(),
            Power::Redfish { url, user, system, insecure, .. } => f
                .debug_struct("Redfish")
                .field("url", url)
                .field("user", user)
                .field("system", system)
                .field("insecure", insecure)
                .finish_non_exhaustive(),
            Power::Ipmi { host, port, cipher, user, .. } => f
                .debug_struct("Ipmi")
                .field("host", host)
                .field("port", port)
                .field("cipher", cipher)
                .field("user", user)
                .finish_non_exhaustive(),
            Power::RetiredArgv { argv } => write!(f, "RetiredArgv({} words)", argv.len()),
        }
    }
}

impl Power {
    /// The driver's name (`manual`, `command`, `redfish`, `ipmi`).
    pub fn kind(&self) -> &'static str {
        match self {
            Power::Manual => "manual",
            Power::Command { .. } | Power::RetiredArgv { .. } => "command",
            Power::Redfish { .. } => "redfish",
            Power::Ipmi { .. } => "ipmi",
        }
    }
}

/// How long a power command may take.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes kept of a command's stdout, and of its stderr for its error.
const MAX_STDERR: usize = 1024;

impl Power {
    /// Parses and checks settings from the API against the controller's
    /// configuration `cfg`: a command must be one `cfg` names; an argv or
    /// an ipmitool path is refused, whatever it says.
    pub fn from_json(v: &serde_json::Value, cfg: &PowerConfig) -> Result<Power, String> {
        let p: StoredPower = serde_json::from_value(v.clone()).map_err(|e| format!("bad power settings: {e}"))?;
        match &p {
            StoredPower::Command { argv: Some(_), .. } => {
                return Err("bad power settings: a command driver names a power command of the controller's \
                            configuration ({\"kind\": \"command\", \"name\": …}); the API cannot give an argv"
                    .into())
            }
            StoredPower::Command { name: None, .. } => {
                return Err("bad power settings: a command driver needs the name of a power command \
                            of the controller's configuration"
                    .into())
            }
            StoredPower::Command { name: Some(name), .. } if !cfg.commands.contains_key(name) => {
                return Err(unknown_command(name))
            }
            StoredPower::Ipmi { tool: Some(_), .. } => {
                return Err("bad power settings: the ipmitool to run is the controller's (byoi serve --ipmitool); \
                            the API cannot choose it"
                    .into())
            }
            StoredPower::Ipmi { host, .. } if !valid_host(host) => {
                return Err("bad power settings: an ipmi host is a DNS name or an IP address \
                            (letters, digits, '.', '-', ':', at most 253, not starting with '-')"
                    .into())
            }
            StoredPower::Ipmi { port: Some(0), .. } => {
                return Err("bad power settings: an ipmi port is 1 to 65535".into())
            }
            _ => {}
        }
        Power::try_from(p).map_err(|e| format!("bad power settings: {e}"))
    }

    /// Performs `action` on `server` with the drivers `cfg` configures.
    /// `Ok(false)` for manual: nothing was done. A cycle that fails (BMCs
    /// refuse to reset a server that is off) is followed by a power-on.
    pub async fn run(&self, action: PowerAction, server: &str, cfg: &PowerConfig) -> Result<bool, String> {
        match self.run_once(action, server, cfg).await {
            Err(e) if action == PowerAction::Cycle && matches!(self, Power::Redfish { .. } | Power::Ipmi { .. }) => {
                tracing::info!(error = %e, "power cycle refused; powering on");
                self.run_once(PowerAction::On, server, cfg).await.map_err(|on| format!("{e}; then power on: {on}"))
            }
            other => other,
        }
    }

    /// The server's power state; [`PowerState::Unknown`] for manual power.
    pub async fn status(&self, server: &str, cfg: &PowerConfig) -> Result<PowerState, String> {
        match self.call(Op::Status, server, cfg).await? {
            None => Ok(PowerState::Unknown),
            Some(text) => PowerState::parse(self.kind(), &text),
        }
    }

    /// Has the server boot from the network once, at its next boot, in
    /// `firmware`'s mode where known (IPMI `chassis bootdev pxe`, with
    /// `options=efiboot` for UEFI; Redfish `BootSourceOverrideTarget=Pxe`,
    /// `BootSourceOverrideEnabled=Once`). `Ok(false)`: the driver cannot
    /// (manual, command).
    pub async fn netboot_once(
        &self,
        server: &str,
        firmware: Option<BootMode>,
        cfg: &PowerConfig,
    ) -> Result<bool, String> {
        match self {
            Power::Manual | Power::Command { .. } | Power::RetiredArgv { .. } => Ok(false),
            Power::Redfish { .. } | Power::Ipmi { .. } => {
                self.call(Op::NetbootOnce(firmware), server, cfg).await.map(|out| out.is_some())
            }
        }
    }

    async fn run_once(&self, action: PowerAction, server: &str, cfg: &PowerConfig) -> Result<bool, String> {
        self.call(Op::Act(action), server, cfg).await.map(|out| out.is_some())
    }

    /// Asks the driver `op`: `None` for manual power (nothing done), else
    /// what the driver printed (a command's or ipmitool's stdout, Redfish's
    /// `PowerState`).
    async fn call(&self, op: Op, server: &str, cfg: &PowerConfig) -> Result<Option<String>, String> {
        let (argv, env): (Vec<String>, Vec<(&str, String)>) = match self {
            Power::Manual => return Ok(None),
            Power::RetiredArgv { .. } => {
                return Err(format!(
                    "{server}'s command power driver was registered with an argv, which byoi no longer runs: \
                     name the command in the controller's --power-commands file and register {server} again \
                     with {{\"kind\": \"command\", \"name\": …}}"
                ))
            }
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
                return tokio::time::timeout(TIMEOUT, rf.call(system.as_deref(), op))
                    .await
                    .map_err(|_| format!("the BMC at {url} did not answer within {}s", TIMEOUT.as_secs()))?
                    .map(Some);
            }
            Power::Command { name } => {
                let template = cfg.commands.get(name).ok_or_else(|| unknown_command(name))?;
                let argv = template.iter().map(|a| a.replace("{action}", op.as_str()).replace("{server}", server));
                (argv.collect(), vec![])
            }
            Power::Ipmi { host, port, cipher, user, password } => {
                let mut argv = vec![cfg.ipmitool.to_string_lossy().into_owned(), "-I".into(), "lanplus".into()];
                if let Some(cipher) = cipher {
                    argv.extend(["-C".to_owned(), cipher.to_string()]);
                }
                argv.extend(["-H".to_owned(), host.clone()]);
                if let Some(port) = port {
                    argv.extend(["-p".to_owned(), port.to_string()]);
                }
                argv.extend(["-U".to_owned(), user.clone(), "-E".to_owned()]);
                let words: &[&str] = match op {
                    Op::Act(a) => &["chassis", "power", a.as_str()],
                    Op::Status => &["chassis", "power", "status"],
                    Op::NetbootOnce(Some(BootMode::Uefi)) => &["chassis", "bootdev", "pxe", "options=efiboot"],
                    Op::NetbootOnce(_) => &["chassis", "bootdev", "pxe"],
                };
                argv.extend(words.iter().map(|w| w.to_string()));
                (argv, vec![("IPMI_PASSWORD", password.clone())])
            }
        };
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]).env_clear().env("PATH", CHILD_PATH).envs(env).kill_on_drop(true);
        let out = tokio::time::timeout(TIMEOUT, cmd.output())
            .await
            .map_err(|_| format!("{} did not finish within {}s", argv[0], TIMEOUT.as_secs()))?
            .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(MAX_STDERR)]).into_owned();
            return Err(format!("{} failed ({}): {}", argv[0], out.status, err.trim()));
        }
        Ok(Some(String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(MAX_STDERR)]).into_owned()))
    }
}

/// Whether `host` may be given to ipmitool's `-H`: a DNS name or an IPv4
/// or IPv6 address, which never reads as an option.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
}

mod redfish {
    //! A minimal Redfish client: find the system; reset it, read its
    //! `PowerState`, or set a one-time PXE boot.

    use std::sync::Arc;

    use base64::Engine;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    use byoi_wire::BootMode;

    use super::{Op, PowerAction};

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
        async fn request(
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

        /// `op` on `system` (default: the BMC's first); the system's
        /// `PowerState` for [`Op::Status`], else empty.
        pub(super) async fn call(&self, system: Option<&str>, op: Op) -> Result<String, String> {
            let system = match system {
                Some(s) => format!("/redfish/v1/Systems/{s}"),
                None => {
                    let systems = self.request("GET", "/redfish/v1/Systems", None).await?;
                    systems["Members"][0]["@odata.id"]
                        .as_str()
                        .ok_or("the BMC lists no system under /redfish/v1/Systems")?
                        .to_owned()
                }
            };
            match op {
                Op::Act(action) => {
                    let reset_type = match action {
                        PowerAction::On => "On",
                        PowerAction::Off => "ForceOff",
                        PowerAction::Cycle => "ForceRestart",
                    };
                    let path = format!("{system}/Actions/ComputerSystem.Reset");
                    let body = serde_json::json!({ "ResetType": reset_type });
                    self.request("POST", &path, Some(body)).await.map(|_| String::new())
                }
                Op::Status => {
                    let v = self.request("GET", &system, None).await?;
                    v["PowerState"].as_str().map(str::to_owned).ok_or_else(|| format!("{system} has no PowerState"))
                }
                Op::NetbootOnce(firmware) => {
                    let mut boot = serde_json::json!({
                        "BootSourceOverrideEnabled": "Once",
                        "BootSourceOverrideTarget": "Pxe",
                    });
                    if let Some(mode) = firmware {
                        boot["BootSourceOverrideMode"] = match mode {
                            BootMode::Uefi => "UEFI",
                            BootMode::Legacy => "Legacy",
                        }
                        .into();
                    }
                    let body = serde_json::json!({ "Boot": boot });
                    self.request("PATCH", &system, Some(body)).await.map(|_| String::new())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, commands: serde_json::Value) -> PowerConfig {
        let path = dir.join("power-commands.json");
        std::fs::write(&path, commands.to_string()).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        PowerConfig::load(Some(&path), Some(dir.join("ipmitool"))).unwrap()
    }

    #[tokio::test]
    async fn command_driver_runs_the_configured_argv_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let script = format!("echo {{server}} {{action}} >> {}", log.display());
        let cfg = config(dir.path(), serde_json::json!({"lab-pdu": ["sh", "-c", script], "broken": ["false"]}));
        let p = Power::from_json(&serde_json::json!({"kind": "command", "name": "lab-pdu"}), &cfg).unwrap();
        assert!(p.run(PowerAction::Cycle, "web1", &cfg).await.unwrap());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "web1 cycle\n");
        let bad = Power::from_json(&serde_json::json!({"kind": "command", "name": "broken"}), &cfg).unwrap();
        assert!(bad.run(PowerAction::On, "web1", &cfg).await.unwrap_err().starts_with("false failed"));
        // A name the configuration lost since registration.
        let gone = PowerConfig::default();
        let e = p.run(PowerAction::Cycle, "web1", &gone).await.unwrap_err();
        assert_eq!(
            e,
            "no power command named \"lab-pdu\" in the controller's configuration (byoi serve --power-commands)"
        );
        assert!(!Power::Manual.run(PowerAction::Cycle, "web1", &cfg).await.unwrap());
    }

    #[test]
    fn the_api_names_commands_and_never_gives_a_program() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), serde_json::json!({"lab-pdu": ["true"]}));
        let e = Power::from_json(&serde_json::json!({"kind": "command", "name": "nope"}), &cfg).unwrap_err();
        assert_eq!(
            e,
            "no power command named \"nope\" in the controller's configuration (byoi serve --power-commands)"
        );
        let e =
            Power::from_json(&serde_json::json!({"kind": "command", "argv": ["sh", "-c", "id"]}), &cfg).unwrap_err();
        assert!(e.contains("the API cannot give an argv"), "{e}");
        let both = serde_json::json!({"kind": "command", "name": "lab-pdu", "argv": ["true"]});
        assert!(Power::from_json(&both, &cfg).unwrap_err().contains("the API cannot give an argv"));
        let e = Power::from_json(&serde_json::json!({"kind": "command"}), &cfg).unwrap_err();
        assert!(e.contains("needs the name of a power command"), "{e}");
        let ipmi = serde_json::json!({"kind": "ipmi", "host": "h", "user": "u", "password": "p", "tool": "/tmp/x"});
        let e = Power::from_json(&ipmi, &cfg).unwrap_err();
        assert!(e.contains("byoi serve --ipmitool") && !e.contains("/tmp/x"), "{e}");
        assert!(Power::from_json(&serde_json::json!({"kind": "telepathy"}), &cfg).is_err());
        let stored = serde_json::to_value(Power::Command { name: "lab-pdu".into() }).unwrap();
        assert_eq!(stored, serde_json::json!({"kind": "command", "name": "lab-pdu"}));
    }

    #[tokio::test]
    async fn ipmitool_is_the_configured_one_with_a_clean_environment() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let cfg = config(dir.path(), serde_json::json!({}));
        let tool = &cfg.ipmitool;
        // The password comes from the environment, never argv; nothing else
        // of the controller's environment (HOME, this test's variables…).
        std::fs::write(
            tool,
            format!("#!/bin/sh\necho \"$* pw=$IPMI_PASSWORD\" > {}\nenv >> {}\n", log.display(), log.display()),
        )
        .unwrap();
        std::fs::set_permissions(tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let ipmi = serde_json::json!({"kind": "ipmi", "host": "10.0.0.9", "user": "admin", "password": "s3cret"});
        let ipmi = Power::from_json(&ipmi, &cfg).unwrap();
        assert!(ipmi.run(PowerAction::Cycle, "web1", &cfg).await.unwrap());
        let out = std::fs::read_to_string(&log).unwrap();
        let (first, env) = out.split_once('\n').unwrap();
        assert_eq!(first, "-I lanplus -H 10.0.0.9 -U admin -E chassis power cycle pw=s3cret");
        let mut names: Vec<&str> = env.lines().filter_map(|l| l.split_once('=')).map(|(k, _)| k).collect();
        names.sort();
        // What sh itself sets (PWD, SHLVL, _ depending on the shell) aside.
        names.retain(|n| !matches!(*n, "PWD" | "SHLVL" | "_" | "OLDPWD"));
        assert_eq!(names, ["IPMI_PASSWORD", "PATH"], "{env}");
        assert!(env.contains(&format!("PATH={CHILD_PATH}\n")), "{env}");
        assert!(!format!("{ipmi:?}").contains("s3cret"), "{ipmi:?}");

        // Status reads ipmitool's sentence; the one-time network boot is
        // UEFI's where the firmware is known to be UEFI; a port is `-p`.
        std::fs::write(tool, format!("#!/bin/sh\necho \"$*\" >> {}\necho Chassis Power is off\n", log.display()))
            .unwrap();
        std::fs::remove_file(&log).unwrap();
        let ipmi = serde_json::json!({"kind": "ipmi", "host": "bmc-7.lab", "port": 6230, "cipher": 17, "user": "admin",
                                      "password": "s3cret"});
        let ipmi = Power::from_json(&ipmi, &cfg).unwrap();
        assert_eq!(ipmi.status("web1", &cfg).await.unwrap(), PowerState::Off);
        assert!(ipmi.netboot_once("web1", Some(BootMode::Uefi), &cfg).await.unwrap());
        assert!(ipmi.netboot_once("web1", Some(BootMode::Legacy), &cfg).await.unwrap());
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "-I lanplus -C 17 -H bmc-7.lab -p 6230 -U admin -E chassis power status\n\
             -I lanplus -C 17 -H bmc-7.lab -p 6230 -U admin -E chassis bootdev pxe options=efiboot\n\
             -I lanplus -C 17 -H bmc-7.lab -p 6230 -U admin -E chassis bootdev pxe\n"
        );
        assert_eq!(serde_json::to_value(&ipmi).unwrap()["port"], 6230);
    }

    #[test]
    fn ipmi_hosts_and_ports_are_checked() {
        let cfg = PowerConfig::default();
        let ipmi = |host: &str, port: u32| serde_json::json!({"kind": "ipmi", "host": host, "port": port, "user": "u", "password": "p"});
        for good in ["10.0.0.9", "bmc-7.lab", "fe80::1", "BMC_1"] {
            assert!(Power::from_json(&ipmi(good, 623), &cfg).is_ok(), "{good}");
        }
        for bad in ["", "-oProxyCommand=x", "bmc 7", "bmc\n7", &"a".repeat(254)] {
            let e = Power::from_json(&ipmi(bad, 623), &cfg).unwrap_err();
            assert!(e.contains("an ipmi host is a DNS name or an IP address"), "{bad:?}: {e}");
        }
        assert_eq!(
            Power::from_json(&ipmi("h", 0), &cfg).unwrap_err(),
            "bad power settings: an ipmi port is 1 to 65535"
        );
        assert!(Power::from_json(&ipmi("h", 65536), &cfg).unwrap_err().starts_with("bad power settings"));
    }

    #[tokio::test]
    async fn command_drivers_report_status_and_are_not_asked_to_netboot() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let script = format!("echo {{action}} >> {}; [ {{action}} != status ] || echo ON", log.display());
        let cfg = config(dir.path(), serde_json::json!({"pdu": ["sh", "-c", script], "mute": ["true"]}));
        let p = Power::from_json(&serde_json::json!({"kind": "command", "name": "pdu"}), &cfg).unwrap();
        assert_eq!(p.status("web1", &cfg).await.unwrap(), PowerState::On);
        assert!(!p.netboot_once("web1", Some(BootMode::Uefi), &cfg).await.unwrap());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "status\n");
        let mute = Power::from_json(&serde_json::json!({"kind": "command", "name": "mute"}), &cfg).unwrap();
        assert_eq!(
            mute.status("web1", &cfg).await.unwrap_err(),
            "the command driver reported the power as \"\", neither on nor off"
        );
        assert_eq!(Power::Manual.status("web1", &cfg).await.unwrap(), PowerState::Unknown);
        assert!(!Power::Manual.netboot_once("web1", None, &cfg).await.unwrap());
    }

    /// byoi 0.1 stored the API's argv: such a server loads, shows its kind,
    /// and refuses every action, saying what to do.
    #[tokio::test]
    async fn a_stored_argv_is_never_run() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let stored = serde_json::json!({"kind": "command", "argv": ["touch", marker]});
        let row = stored.to_string();
        let p: Power = serde_json::from_str(&row).unwrap();
        assert_eq!(p.kind(), "command");
        assert_eq!(format!("{p:?}"), "RetiredArgv(2 words)");
        let e = p.run(PowerAction::Cycle, "web1", &PowerConfig::default()).await.unwrap_err();
        assert!(e.contains("web1's command power driver was registered with an argv"), "{e}");
        assert!(e.contains("--power-commands") && e.contains("register web1 again"), "{e}");
        assert!(!marker.exists());
        // It reads back as it was stored.
        assert_eq!(serde_json::to_value(&p).unwrap(), stored);
        // 0.1's ipmi `tool` is dropped: the configured ipmitool runs.
        let old = r#"{"kind":"ipmi","host":"h","user":"u","password":"p","tool":"/opt/evil"}"#;
        let p: Power = serde_json::from_str(old).unwrap();
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"kind":"ipmi","host":"h","user":"u","password":"p"})
        );
    }

    #[test]
    fn the_configuration_file_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let load = |text: &str, mode: u32| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
            PowerConfig::load(Some(&path), None).map_err(|e| e.to_string())
        };
        assert_eq!(load(r#"{"a": ["true"]}"#, 0o600).unwrap().commands["a"], ["true"]);
        assert_eq!(load(r#"{"a": ["true"]}"#, 0o600).unwrap().ipmitool, Path::new("ipmitool"));
        let p = path.display();
        assert_eq!(
            load(r#"{"a": ["true"]}"#, 0o666).unwrap_err(),
            format!("refusing power commands from {p}: it is writable by other users than its owner (chmod go-w it)")
        );
        assert_eq!(load(r#"{"a": []}"#, 0o600).unwrap_err(), format!("power command \"a\" in {p} has no program"));
        assert_eq!(load(r#"{"a": [""]}"#, 0o600).unwrap_err(), format!("power command \"a\" in {p} has no program"));
        assert_eq!(
            load(r#"{"a b": ["true"]}"#, 0o600).unwrap_err(),
            format!(
                "power command name \"a b\" in {p}: letters, digits, '-', '_' and '.', at most 128, not '.' or '..', not starting with '-'"
            )
        );
        assert!(load(r#"["true"]"#, 0o600).unwrap_err().contains("are not a JSON object"));
        assert!(PowerConfig::load(Some(&dir.path().join("missing")), None).is_err());
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
                            } else if line.starts_with("GET /redfish/v1/Systems/1 ") {
                                r#"{"Id":"1","PowerState":"PoweringOn"}"#
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
        let e = Power::from_json(&plain, &PowerConfig::default())
            .unwrap()
            .run(PowerAction::Cycle, "s", &PowerConfig::default())
            .await
            .unwrap_err();
        assert!(e.contains("over plain HTTP"), "{e}");
        assert!(seen.lock().unwrap().is_empty());
        let insecure =
            serde_json::json!({"kind": "redfish", "url": url, "user": "admin", "password": "pw", "insecure": true});
        assert!(Power::from_json(&insecure, &PowerConfig::default())
            .unwrap()
            .run(PowerAction::Cycle, "s", &PowerConfig::default())
            .await
            .unwrap());
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0], "GET /redfish/v1/Systems Basic YWRtaW46cHc= ");
        assert_eq!(
            seen[1],
            r#"POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset Basic YWRtaW46cHc= {"ResetType":"ForceRestart"}"#
        );
    }

    #[tokio::test]
    async fn redfish_reads_the_power_state_and_sets_a_one_time_pxe_boot() {
        let (url, seen) = fake_bmc().await;
        let cfg = PowerConfig::default();
        let settings = serde_json::json!({"kind": "redfish", "url": url, "user": "admin", "password": "pw",
                                          "system": "1", "insecure": true});
        let p = Power::from_json(&settings, &cfg).unwrap();
        assert_eq!(p.status("s", &cfg).await.unwrap(), PowerState::On);
        assert!(p.netboot_once("s", Some(BootMode::Uefi), &cfg).await.unwrap());
        assert!(p.netboot_once("s", None, &cfg).await.unwrap());
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0], "GET /redfish/v1/Systems/1 Basic YWRtaW46cHc= ");
        let patch = |body: &str| format!("PATCH /redfish/v1/Systems/1 Basic YWRtaW46cHc= {body}");
        assert_eq!(
            seen[1],
            patch(
                r#"{"Boot":{"BootSourceOverrideEnabled":"Once","BootSourceOverrideMode":"UEFI","BootSourceOverrideTarget":"Pxe"}}"#
            )
        );
        assert_eq!(seen[2], patch(r#"{"Boot":{"BootSourceOverrideEnabled":"Once","BootSourceOverrideTarget":"Pxe"}}"#));
    }
}
