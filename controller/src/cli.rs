//! `byoi`: `serve`, and the operator's client commands.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use http::Method;
use serde_json::{json, Value};

use byoi_controller::auth::AccessRule;
use byoi_controller::client::{self, PowerCycle};
use byoi_controller::edge;
use byoi_controller::power::PowerConfig;
use byoi_controller::server::{self, ServeOptions};

use crate::output::{self, cell, OutputArgs, Table};
use crate::profile;

/// `status`: the deployment failed.
const EXIT_FAILED: i32 = 1;
/// Bad arguments, or the controller refused the request (400, 401, 403,
/// 5xx); also clap's code for a usage error.
const EXIT_CLIENT: i32 = 2;
/// The controller could not power-cycle the server, or its power driver
/// failed (`power`).
const EXIT_POWER: i32 = 3;
/// `deploy --wait --timeout`: the deployment had not ended (it goes on).
const EXIT_TIMEOUT: i32 = 4;
/// The controller answered 404: no such server (or deployment, task…).
const EXIT_NOT_FOUND: i32 = 5;
/// The controller answered 409: a deployment runs, the name or MAC is
/// taken, the server has manual power…
const EXIT_CONFLICT: i32 = 6;
/// No answer from the controller: no connection, a failed TLS handshake or
/// an untrusted certificate, a broken answer.
const EXIT_UNREACHABLE: i32 = 7;

/// The exit statuses, shown by `--help`.
const EXIT_CODES: &str = "\
Exit status:
  0  ok
  1  the deployment failed (status)
  2  usage error, or the controller refused the request (bad input, credentials)
  3  the server's power driver failed (deploy, cancel, power, inspect)
  4  deploy --wait --timeout gave up before the deployment ended (it goes on)
  5  not found (no such server, deployment or task)
  6  conflict (a deployment runs, a name or MAC is taken, manual power)
  7  the controller is unreachable (connection, TLS, a broken answer)";

/// `byoi --version`: the release and the git commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BYOI_GIT_COMMIT"), ")");

#[derive(Debug, Parser)]
#[command(name = "byoi", version = VERSION, about = "Bring Your Own Image for bare-metal servers", after_help = EXIT_CODES)]
struct Cli {
    /// Log lines on stderr: `text` for people, or `json` for log
    /// collectors (one object a line, with the request id and the server
    /// and deployment a line concerns).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "BYOI_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object a line.
    Json,
}

/// Which controller the client commands call, and how they authenticate.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Controller URL; else the profile's, else http://127.0.0.1:8080.
    #[arg(long, global = true, env = "BYOI_CONTROLLER")]
    controller: Option<String>,
    /// API token; else $BYOI_API_TOKEN, else the profile's, else
    /// DATA_DIR/api-token. Prefer the profile: a flag shows in `ps`.
    #[arg(long, global = true)]
    token: Option<String>,
    /// The named profile of the profile file ($BYOI_PROFILE_FILE, else
    /// ~/.config/byoi/config.toml) to take the controller, token and CA
    /// from; else its top level.
    #[arg(long, global = true, env = "BYOI_PROFILE")]
    profile: Option<String>,
    /// Data directory to read the API token from.
    #[arg(long, global = true, default_value = "/var/lib/byoi")]
    data_dir: PathBuf,
    /// Extra trust roots (PEM) for a controller with a private CA, in
    /// addition to the web PKI's; else the profile's.
    #[arg(long, global = true, value_name = "PEM")]
    ca_file: Option<PathBuf>,
}

/// The controller the client commands call without --controller, a
/// variable or a profile.
const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:8080";

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the controller.
    Serve {
        /// Address to listen on; with port 0 a free port is chosen and printed.
        /// Serves every route, or with --netboot-listen the API and the
        /// agent protocol only.
        #[arg(long, default_value = "127.0.0.1:8080", env = "BYOI_LISTEN")]
        listen: SocketAddr,
        /// Serve the netboot routes (iPXE scripts, kernel, initramfs) on
        /// this address, over plain HTTP, and only there.
        #[arg(long, value_name = "ADDR", env = "BYOI_NETBOOT_LISTEN")]
        netboot_listen: Option<SocketAddr>,
        /// Where the SQLite database and the API token live.
        #[arg(long, default_value = "/var/lib/byoi", env = "BYOI_DATA_DIR")]
        data_dir: PathBuf,
        /// Where the state is kept: postgres://USER:PASSWORD@HOST:PORT/DATABASE, shared by every
        /// replica of the controller (docs/scale.md), or a SQLite file; default DATA_DIR/byoi.sqlite.
        #[arg(long, value_name = "URL", env = "BYOI_DATABASE", hide_env_values = true)]
        database: Option<String>,
        /// API token; else $BYOI_API_TOKEN, else DATA_DIR/api-token (generated on first start).
        #[arg(long, env = "BYOI_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
        /// Kernel and initramfs to serve; default DATA_DIR/artifacts.
        #[arg(long, env = "BYOI_ARTIFACTS")]
        artifacts: Option<PathBuf>,
        /// URL servers reach the API and the agent protocol at (the agent's
        /// byoi.controller=); else the host iPXE asked for, with the port
        /// and scheme of --listen.
        #[arg(long, env = "BYOI_PUBLIC_URL")]
        public_url: Option<String>,
        /// URL servers reach the netboot listener at (what iPXE fetches);
        /// else http:// and the host iPXE asked for.
        #[arg(long, requires = "netboot_listen", env = "BYOI_NETBOOT_PUBLIC_URL")]
        netboot_public_url: Option<String>,
        /// Every URL the agent may reach the controller at, `,`-separated,
        /// in the order it tries them: the replicas sharing one PostgreSQL
        /// database (docs/scale.md); else the public URL.
        #[arg(long = "agent-url", value_name = "URL", value_delimiter = ',', value_parser = agent_url, env = "BYOI_AGENT_URLS")]
        agent_urls: Vec<String>,
        /// TLS certificate chain (PEM).
        #[arg(long, requires = "tls_key", env = "BYOI_TLS_CERT")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, requires = "tls_cert", env = "BYOI_TLS_KEY")]
        tls_key: Option<PathBuf>,
        /// Seconds a controller holds a power cycle it was asked for before another controller on the
        /// same database may take it over (it died first); longer than a power cycle may take.
        #[arg(long, value_name = "SECONDS", default_value_t = byoi_controller::db::POWER_LEASE.as_secs(), value_parser = clap::value_parser!(u64).range(1..), env = "BYOI_POWER_LEASE")]
        power_lease: u64,
        /// Seconds without agent reports before a running deployment fails.
        #[arg(long, default_value_t = 120, env = "BYOI_AGENT_TIMEOUT")]
        agent_timeout: u64,
        /// Seconds for a server to netboot into the agent after a POST (or
        /// a DELETE): agent tokens are minted only within them.
        #[arg(long, default_value_t = 1800, env = "BYOI_BOOT_TIMEOUT")]
        boot_timeout: u64,
        /// Seconds a running deployment may go without its bytes or its
        /// stage moving (while its agent still reports) before it fails.
        #[arg(long, default_value_t = 900, env = "BYOI_STALL_TIMEOUT")]
        stall_timeout: u64,
        /// Boot scripts (`/boot/{mac}`) one MAC may fetch per minute.
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..), env = "BYOI_BOOT_RATE_PER_MAC")]
        boot_rate_per_mac: u32,
        /// Boot scripts one source address may fetch per minute.
        #[arg(
            long,
            default_value_t = 120,
            value_parser = clap::value_parser!(u32).range(1..),
            env = "BYOI_BOOT_RATE_PER_SOURCE"
        )]
        boot_rate_per_source: u32,
        #[command(flatten)]
        limits: LimitArgs,
        /// JSON file naming the commands the `command` power driver may run:
        /// {"NAME": ["program", "arg", "{action}", "{server}"], …}; the API
        /// refers to them by name and cannot run anything else.
        #[arg(long, value_name = "FILE", env = "BYOI_POWER_COMMANDS")]
        power_commands: Option<PathBuf>,
        /// A token that may read /metrics (Authorization: Bearer) and
        /// nothing else, for Prometheus; the API token may read it too.
        #[arg(long, env = "BYOI_METRICS_TOKEN", hide_env_values = true)]
        metrics_token: Option<String>,
        /// The ipmitool the `ipmi` power driver runs; default: `ipmitool`
        /// from /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin.
        #[arg(long, value_name = "PATH", env = "BYOI_IPMITOOL")]
        ipmitool: Option<PathBuf>,
        /// Let machines whose MAC no server has netboot the agent in
        /// discover mode: it reports their hardware and powers them off;
        /// see `servers --discovered` and `server adopt`.
        #[arg(long, env = "BYOI_ENLIST")]
        enlist: bool,
        /// Extra kernel arguments for the discovering agent, space
        /// separated ("console=ttyS1,115200 nomodeset").
        #[arg(long, value_name = "ARGS", value_delimiter = ' ', value_parser = kernel_arg, env = "BYOI_ENLIST_KERNEL_ARGS")]
        enlist_kernel_args: Vec<String>,
        /// Most discovered machines kept at once; then unknown MACs get the
        /// unknown-MAC script until some are adopted or forgotten (those
        /// that never reported within --boot-timeout make room).
        #[arg(
            long,
            value_name = "N",
            default_value_t = byoi_controller::db::MAX_DISCOVERED,
            value_parser = clap::value_parser!(u32).range(1..),
            env = "BYOI_ENLIST_MAX_MACHINES"
        )]
        enlist_max_machines: u32,
        /// The configuration file: TOML whose keys are these flags'
        /// (`listen = "0.0.0.0:8443"`, `agent_timeout = 300`); a flag, then
        /// its BYOI_* variable, then the file, then the default decides.
        /// Default: /etc/byoi/byoi.toml if it exists.
        #[arg(long, value_name = "FILE", env = "BYOI_CONFIG")]
        config: Option<PathBuf>,
        /// Check the configuration (files it names included), print each
        /// setting and where it came from, and exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Manages servers.
    #[command(after_help = EXIT_CODES)]
    Server {
        #[command(subcommand)]
        command: ServerCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lists servers, or with --discovered the machines no server has that
    /// the agent discovered (serve --enlist).
    #[command(after_help = EXIT_CODES)]
    Servers {
        /// List the discovered machines instead, with their hardware.
        #[arg(long)]
        discovered: bool,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deploys an image onto a server; with manual power, says when to
    /// reboot it by hand.
    #[command(after_help = EXIT_CODES)]
    Deploy(DeployArgs),
    /// Shows a deployment's status, and the fingerprint of the SSH host key
    /// the server's rescue system presents.
    #[command(after_help = EXIT_CODES)]
    Status {
        /// Server name.
        name: String,
        /// Follow it until it ends (exit 0 on done, 1 on error).
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manages API credentials for OVHcloud's SDKs and tools (signed
    /// requests, as OVHcloud's API takes them).
    #[command(after_help = EXIT_CODES)]
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The controller's database, on the controller's host.
    #[command(after_help = EXIT_CODES)]
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Prints the shell completions of `byoi` (source it, or install it as
    /// the shell's completion file for byoi).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Writes `byoi`'s manual pages (byoi.1, byoi-serve.1, …) into DIR.
    Manpages {
        /// Where to write them.
        dir: PathBuf,
    },
    /// Netboots the agent on a server to report its hardware (disks, disk
    /// groups, NICs, memory, firmware), then powers it off; see `server
    /// show` and GET …/specifications/hardware.
    #[command(after_help = EXIT_CODES)]
    Inspect {
        /// Server name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Shows the agent's log of a server's deployment: its console lines
    /// (which image, which disk, the network), notes, warnings and errors.
    #[command(after_help = EXIT_CODES)]
    Logs {
        /// Server name.
        name: String,
        /// The deployment (default: the server's newest).
        #[arg(long, value_name = "ID", conflicts_with = "follow")]
        deployment: Option<i64>,
        /// Follow the running deployment's lines until it ends.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Powers a server on or off, power-cycles it, or shows its power
    /// state, with its power driver (IPMI, Redfish or a command).
    #[command(after_help = EXIT_CODES)]
    Power {
        /// What to do.
        action: PowerVerb,
        /// Server name.
        name: String,
        /// Power off or cycle even while a deployment runs on it (the
        /// deployment then fails).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Aborts a deployment; the server boots into rescue.
    #[command(after_help = EXIT_CODES)]
    Cancel {
        /// Server name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_progress_template_parses() {
        assert!(indicatif::ProgressStyle::with_template(super::PROGRESS_TEMPLATE).is_ok());
    }

    #[test]
    fn agent_urls_go_on_a_kernel_command_line() {
        assert_eq!(super::agent_url("https://byoi-a.lab:8443/").unwrap(), "https://byoi-a.lab:8443");
        for bad in ["byoi.lab", "ftp://byoi.lab", "http://a,http://b", "http://a b", "http://x/${evil}", ""] {
            assert!(super::agent_url(bad).is_err(), "{bad:?}");
        }
    }
}

/// `byoi power`'s actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PowerVerb {
    /// Power on.
    On,
    /// Power off (at once, as pulling the plug).
    Off,
    /// Power-cycle (powers on a server that is off).
    Cycle,
    /// Show the power state.
    Status,
}

/// `serve`'s connection timeouts and caps (see `edge::Limits`).
#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Seconds a client may take to send a request's head, from its first
    /// byte; then the connection is closed.
    #[arg(
        long,
        default_value_t = edge::HEADER_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..),
        env = "BYOI_HEADER_TIMEOUT"
    )]
    header_timeout: u64,
    /// Seconds a client may take to send a request's body, from the end of
    /// its head; then it is answered 408 and the connection is closed.
    #[arg(
        long,
        default_value_t = edge::BODY_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..),
        env = "BYOI_BODY_TIMEOUT"
    )]
    body_timeout: u64,
    /// Seconds a connection may stay open without a request; then it is
    /// closed.
    #[arg(
        long,
        default_value_t = edge::IDLE_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..),
        env = "BYOI_IDLE_TIMEOUT"
    )]
    idle_timeout: u64,
    /// Seconds a client may take to complete the TLS handshake.
    #[arg(
        long,
        default_value_t = edge::TLS_HANDSHAKE_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..),
        env = "BYOI_TLS_HANDSHAKE_TIMEOUT"
    )]
    tls_handshake_timeout: u64,
    /// Open connections, in total; more are closed at once.
    #[arg(long, default_value_t = edge::MAX_CONNECTIONS, value_parser = at_least_one, env = "BYOI_MAX_CONNECTIONS")]
    max_connections: usize,
    /// Open connections from one IPv4 address or IPv6 /64; more are closed
    /// at once. Behind a reverse proxy, raise it to --max-connections.
    #[arg(
        long,
        default_value_t = edge::MAX_CONNECTIONS_PER_SOURCE,
        value_parser = at_least_one,
        env = "BYOI_MAX_CONNECTIONS_PER_SOURCE"
    )]
    max_connections_per_source: usize,
}

impl From<LimitArgs> for edge::Limits {
    fn from(a: LimitArgs) -> Self {
        edge::Limits {
            header_timeout: Duration::from_secs(a.header_timeout),
            body_timeout: Duration::from_secs(a.body_timeout),
            idle_timeout: Duration::from_secs(a.idle_timeout),
            tls_handshake_timeout: Duration::from_secs(a.tls_handshake_timeout),
            max_connections: a.max_connections,
            max_connections_per_source: a.max_connections_per_source,
        }
    }
}

/// A kernel argument the boot script can carry.
fn kernel_arg(s: &str) -> Result<String, String> {
    if byoi_controller::model::valid_kernel_arg(s) {
        Ok(s.to_owned())
    } else {
        Err("a kernel argument is one word, without quotes, $ { } \\ | & or #".into())
    }
}

/// A URL the agent reaches the controller at: `http://` or `https://`,
/// one word without iPXE's or the shell's special characters (it goes on
/// the kernel command line).
fn agent_url(s: &str) -> Result<String, String> {
    if !(s.starts_with("http://") || s.starts_with("https://")) {
        return Err("an agent URL starts with http:// or https://".into());
    }
    if !byoi_controller::model::valid_kernel_arg(s) || s.contains(',') {
        return Err("an agent URL is one word, without quotes, commas, $ { } \\ | & or #".into());
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// A count of 1 or more.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Subcommand)]
enum ServerCommand {
    /// Registers a server.
    #[command(after_help = EXIT_CODES)]
    Add {
        /// Name (OVH's serviceName).
        name: String,
        /// MAC address of a NIC; repeatable.
        #[arg(long = "mac", required = true)]
        macs: Vec<String>,
        #[command(flatten)]
        setup: ServerSetup,
    },
    /// Shows a server (JSON): MACs, power driver, agent version,
    /// deployments, rescue host key.
    #[command(after_help = EXIT_CODES)]
    Show {
        /// Name.
        name: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Changes a server: what is given replaces what it had.
    #[command(after_help = EXIT_CODES)]
    Set {
        /// Name.
        name: String,
        /// Its MACs, all of them; repeatable.
        #[arg(long = "mac")]
        macs: Vec<String>,
        /// A new power driver (with its --power-arg).
        #[arg(long, value_parser = ["manual", "command", "ipmi", "redfish"])]
        power: Option<String>,
        /// The new driver's arguments, as for `server add`.
        #[arg(long = "power-arg", allow_hyphen_values = true, requires = "power")]
        power_args: Vec<String>,
        /// The agent's extra kernel arguments, all of them; repeatable.
        #[arg(long = "kernel-arg", conflicts_with = "no_kernel_args")]
        kernel_args: Vec<String>,
        /// Drop the agent's extra kernel arguments.
        #[arg(long)]
        no_kernel_args: bool,
    },
    /// Makes a discovered machine (`servers --discovered`) a server, with
    /// the MACs and hardware it reported; it boots its disk until a deploy.
    #[command(after_help = EXIT_CODES)]
    Adopt {
        /// The MAC it netbooted with.
        mac: String,
        /// The server's name.
        name: String,
        #[command(flatten)]
        setup: ServerSetup,
    },
    /// Forgets a discovered machine; its next netboot discovers it again.
    #[command(after_help = EXIT_CODES)]
    Forget {
        /// The MAC it netbooted with.
        mac: String,
    },
    /// Deletes a server with its deployments and tokens; refused while a
    /// deployment runs on it, unless --force.
    #[command(after_help = EXIT_CODES)]
    Delete {
        /// Name.
        name: String,
        /// Delete it even while a deployment runs (the agent is refused at
        /// its next call).
        #[arg(long)]
        force: bool,
    },
}

/// A new server's power driver and kernel arguments (`server add`,
/// `server adopt`).
#[derive(Debug, clap::Args)]
struct ServerSetup {
    /// Power driver.
    #[arg(long, default_value = "manual", value_parser = ["manual", "command", "ipmi", "redfish"])]
    power: String,
    /// Driver argument: for command, name=… (a command of the
    /// controller's --power-commands file); for ipmi, host=…, [port=…],
    /// user=…, password=…; for redfish, url=https://bmc, user=…,
    /// password=…, [system=…], [insecure=true].
    #[arg(long = "power-arg", allow_hyphen_values = true)]
    power_args: Vec<String>,
    /// Extra kernel argument for the agent (console=ttyS1,115200); repeatable.
    #[arg(long = "kernel-arg")]
    kernel_args: Vec<String>,
}

impl ServerSetup {
    /// The body's `power` and `kernelArgs`, with `serviceName`.
    fn body(&self, name: &str) -> anyhow::Result<Value> {
        let power = client::power_settings(&self.power, &self.power_args)?;
        Ok(json!({"serviceName": name, "power": power, "kernelArgs": self.kernel_args}))
    }
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Copies the database to a new file, readable by its owner only,
    /// consistent while the controller runs (SQLite's VACUUM INTO), and
    /// checks the copy. Run it as the controller's user; restoring is
    /// described in the README.
    #[command(after_help = EXIT_CODES)]
    Backup {
        /// The new file.
        file: PathBuf,
        /// The controller's data directory.
        #[arg(long, default_value = "/var/lib/byoi")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CredentialsCommand {
    /// Makes an application and a consumer key; prints `application_key=`,
    /// `application_secret=` and `consumer_key=` lines for an `ovh.conf`
    /// (the secrets are shown this once).
    #[command(after_help = EXIT_CODES)]
    Add {
        /// A name for the application (letters, digits, '-', '_', '.').
        name: String,
        /// METHOD:PATH the consumer key may call, `*` matching anything
        /// (GET:/dedicated/server/*); repeatable; default: every method on /*.
        #[arg(long = "rule", value_name = "METHOD:PATH")]
        rules: Vec<String>,
        /// A network the consumer key may be used from (192.0.2.0/24);
        /// repeatable; default: any.
        #[arg(long = "allowed-ip", value_name = "CIDR")]
        allowed_ips: Vec<String>,
        /// Make the application only (prints its key and secret): it
        /// requests consumer keys itself (POST /auth/credential), which you
        /// then validate.
        #[arg(long, conflicts_with_all = ["rules", "allowed_ips"])]
        application_only: bool,
    },
    /// Lists applications and their consumer keys (never a secret).
    #[command(after_help = EXIT_CODES)]
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Revokes an application and all its consumer keys, or one consumer key.
    #[command(after_help = EXIT_CODES)]
    Revoke {
        /// The application's name.
        #[arg(required_unless_present = "credential", conflicts_with = "credential")]
        name: Option<String>,
        /// Revoke only this credential (its id, from `list`).
        #[arg(long, value_name = "ID")]
        credential: Option<i64>,
    },
    /// Validates a consumer key an application requested, by its
    /// validation URL or the credentialToken in it.
    #[command(after_help = EXIT_CODES)]
    Validate {
        /// The validation URL, or its credentialToken.
        #[arg(value_name = "URL|TOKEN")]
        link: String,
        /// Refuse it instead.
        #[arg(long)]
        refuse: bool,
    },
}

#[derive(Debug, clap::Args)]
struct DeployArgs {
    /// Server name.
    name: String,
    /// Image URL.
    #[arg(long)]
    url: String,
    /// ALGO:HEX.
    #[arg(long)]
    checksum: Option<String>,
    /// raw, qcow2 or ova; default: the agent detects it.
    #[arg(long = "type")]
    image_type: Option<String>,
    /// Which disk of a multi-disk OVA: a 1-based index, an OVF disk id or a file name.
    #[arg(long, value_name = "N|ID|FILE")]
    ova_disk: Option<String>,
    /// 'Name: value'; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Disk group (see specifications/hardware).
    #[arg(long)]
    disk_group: Option<u32>,
    /// Host name (ConfigDrive).
    #[arg(long)]
    hostname: Option<String>,
    /// SSH public key (ConfigDrive); repeatable.
    #[arg(long = "ssh-key")]
    ssh_keys: Vec<String>,
    /// User data file (ConfigDrive).
    #[arg(long)]
    user_data: Option<PathBuf>,
    /// Network configuration file (ConfigDrive): OpenStack's
    /// network_data.json (static addresses, bonds, VLANs), or with
    /// --configdrive-format nocloud cloud-init's network-config.
    #[arg(long, value_name = "FILE")]
    network_data: Option<PathBuf>,
    /// The ConfigDrive's layout: openstack (label config-2, OVHcloud's) or
    /// nocloud (label cidata).
    #[arg(long, value_parser = ["openstack", "nocloud"])]
    configdrive_format: Option<String>,
    /// KEY=VALUE metadata (ConfigDrive); repeatable.
    #[arg(long)]
    meta: Vec<String>,
    /// UEFI loader on the ESP.
    #[arg(long)]
    efi_loader: Option<String>,
    /// Follow the deployment until it ends, as `status --follow` (exit 0
    /// when done, 1 when it failed).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 4; the
    /// deployment goes on).
    #[arg(long, value_name = "SECS", requires = "wait")]
    timeout: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let (command, file) = match with_config_file(Cli::command(), &args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_CLIENT;
        }
    };
    let matches = command.get_matches_from(&args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    );
    match cli.log_format {
        LogFormat::Text => logs.init(),
        // The request's span (its id, method and path) on every line.
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return EXIT_CLIENT;
        }
    };
    let sources = Sources { matches: matches.subcommand_matches("serve").cloned(), file };
    match rt.block_on(run(cli.command, &sources)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    }
}

/// The exit status for an error: what the controller's answer, or its
/// absence, says; else a client error.
fn exit_code(e: &anyhow::Error) -> i32 {
    match e.chain().find_map(|c| c.downcast_ref::<client::Error>()) {
        Some(client::Error::Api { status, .. }) if *status == http::StatusCode::NOT_FOUND => EXIT_NOT_FOUND,
        Some(client::Error::Api { status, .. }) if *status == http::StatusCode::CONFLICT => EXIT_CONFLICT,
        Some(
            client::Error::Unreachable { .. }
            | client::Error::UntrustedCertificate { .. }
            | client::Error::Body { .. }
            | client::Error::NotJson { .. }
            | client::Error::EventTooLong { .. },
        ) => EXIT_UNREACHABLE,
        _ => EXIT_CLIENT,
    }
}

/// The configuration file `serve` read, and what it set.
#[derive(Debug, Default)]
struct FileSettings {
    path: Option<PathBuf>,
    settings: BTreeMap<String, String>,
}

/// Where `serve`'s settings came from.
#[derive(Debug)]
struct Sources {
    matches: Option<clap::ArgMatches>,
    file: FileSettings,
}

/// Settings no file sets: the file's own name, one-shot actions, help.
const NOT_IN_FILE: &[&str] = &["config", "check_config", "help"];

/// `Cli`'s command with the settings of `serve`'s configuration file as
/// its flags' defaults (a flag and its variable still decide first).
fn with_config_file(cmd: clap::Command, args: &[OsString]) -> anyhow::Result<(clap::Command, FileSettings)> {
    let Some(path) = byoi_controller::config::path_from(args, std::env::var_os(byoi_controller::config::ENV)) else {
        return Ok((cmd, FileSettings::default()));
    };
    let serve = cmd.find_subcommand("serve").context("the serve command")?;
    let mut known: Vec<String> = serve
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .filter(|id| !NOT_IN_FILE.contains(&id.as_str()))
        .collect();
    known.push("log_format".into());
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let secret: Vec<String> =
        serve.get_arguments().filter(|a| a.is_hide_env_values_set()).map(|a| a.get_id().to_string()).collect();
    let secret: Vec<&str> = secret.iter().map(String::as_str).collect();
    let settings = byoi_controller::config::load(&path, &known, &secret)?;
    let mut cmd = cmd;
    for (key, value) in &settings {
        let (key, value) = (key.clone(), value.clone());
        cmd = if key == "log_format" {
            cmd.mut_arg(key, |a| a.default_value(value))
        } else {
            cmd.mut_subcommand("serve", |s| s.mut_arg(key, |a| a.default_value(value)))
        };
    }
    Ok((cmd, FileSettings { path: Some(path), settings }))
}

/// `serve --check-config`'s report: each setting, its value (secrets
/// hidden) and where it came from.
fn print_settings(sources: &Sources) {
    let Some(m) = &sources.matches else { return };
    // Each setting's definition: its variable, and whether it is a secret
    // (its variable's value is hidden from --help).
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").into_iter().flat_map(clap::Command::get_arguments);
    let args: Vec<&clap::Arg> = serve.chain(cli.get_arguments()).collect();
    let arg = |id: &str| args.iter().find(|a| a.get_id() == id);
    let mut ids: Vec<&str> = m.ids().map(|id| id.as_str()).filter(|id| !NOT_IN_FILE.contains(id)).collect();
    ids.sort_unstable();
    for id in ids {
        let Some(raw) = m.get_raw(id) else { continue };
        let value: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        let secret = arg(id).is_some_and(|a| a.is_hide_env_values_set());
        let delimiter = arg(id).and_then(|a| a.get_value_delimiter()).unwrap_or(',');
        let value = if secret { "(set)".to_owned() } else { value.join(&delimiter.to_string()) };
        let from = match m.value_source(id) {
            Some(clap::parser::ValueSource::CommandLine) => "flag".to_owned(),
            Some(clap::parser::ValueSource::EnvVariable) => {
                format!("${}", arg(id).and_then(|a| a.get_env()).map_or("?".into(), |e| e.to_string_lossy()))
            }
            _ if sources.file.settings.contains_key(id) => {
                sources.file.path.as_ref().map_or("file".to_owned(), |p| p.display().to_string())
            }
            _ => "default".to_owned(),
        };
        println!("{id} = {value:?}  # {from}");
    }
}

async fn run(cmd: Command, sources: &Sources) -> anyhow::Result<i32> {
    match cmd {
        Command::Serve {
            listen,
            netboot_listen,
            data_dir,
            database,
            api_token,
            artifacts,
            public_url,
            netboot_public_url,
            agent_urls,
            tls_cert,
            tls_key,
            agent_timeout,
            boot_timeout,
            stall_timeout,
            power_lease,
            boot_rate_per_mac,
            boot_rate_per_source,
            limits,
            power_commands,
            ipmitool,
            metrics_token,
            enlist,
            enlist_kernel_args,
            enlist_max_machines,
            config: _,
            check_config,
        } => {
            // A file's or a variable's value is no flag to clap's
            // `requires`: checked here whichever gave it.
            if tls_cert.is_some() != tls_key.is_some() {
                anyhow::bail!("tls_cert and tls_key go together: give both (flags, BYOI_* variables or the file)");
            }
            if netboot_public_url.is_some() && netboot_listen.is_none() {
                anyhow::bail!("netboot_public_url needs netboot_listen");
            }
            let enlist_kernel_args: Vec<String> = enlist_kernel_args.into_iter().filter(|a| !a.is_empty()).collect();
            if !enlist_kernel_args.is_empty() && !enlist {
                anyhow::bail!("enlist_kernel_args needs enlist");
            }
            if check_config {
                if let (Some(cert), Some(key)) = (&tls_cert, &tls_key) {
                    server::tls_acceptor(cert, key).context("the TLS certificate and key")?;
                }
                PowerConfig::load(power_commands.as_deref(), ipmitool.clone())?;
                print_settings(sources);
                println!("configuration ok");
                return Ok(0);
            }
            let tls = tls_cert.zip(tls_key);
            let scheme = if tls.is_some() { "https" } else { "http" };
            let opts = ServeOptions {
                listen,
                netboot_listen,
                data_dir,
                database: database.as_deref().map(byoi_controller::db::Database::parse),
                api_token,
                artifacts,
                public_url,
                netboot_public_url,
                agent_urls,
                tls,
                agent_timeout: Duration::from_secs(agent_timeout),
                boot_timeout: Duration::from_secs(boot_timeout),
                stall_timeout: Duration::from_secs(stall_timeout),
                power_lease: Duration::from_secs(power_lease),
                boot_rate: byoi_controller::routes::netboot::BootRate {
                    per_mac: boot_rate_per_mac,
                    per_source: boot_rate_per_source,
                },
                limits: limits.into(),
                power: PowerConfig::load(power_commands.as_deref(), ipmitool)?,
                metrics_token,
                enlist: enlist.then_some(byoi_controller::routes::discovered::Enlistment {
                    kernel_args: enlist_kernel_args,
                    max_machines: enlist_max_machines,
                }),
            };
            let (bound, serving) = server::serve(opts).await?;
            println!("listening on {scheme}://{}", bound.addr);
            if let Some(netboot) = bound.netboot {
                println!("netboot listening on http://{netboot}");
            }
            std::io::stdout().flush().ok();
            serving.await;
            Ok(0)
        }
        Command::Server { command: ServerCommand::Add { name, macs, setup }, client } => {
            let mut body = setup.body(&name)?;
            body["macs"] = json!(macs);
            let v = client.connect()?.call(Method::POST, "/dedicated/server", Some(&body)).await?;
            println!("added {} ({})", v["serviceName"].as_str().unwrap_or(&name), v["macs"]);
            Ok(0)
        }
        Command::Server { command: ServerCommand::Show { name, out }, client } => {
            let v = client.connect()?.call(Method::GET, &format!("/dedicated/server/{name}"), None).await?;
            output::print(out.output, &v, || server_table(&v))?;
            Ok(0)
        }
        Command::Server {
            command: ServerCommand::Set { name, macs, power, power_args, kernel_args, no_kernel_args },
            client,
        } => {
            let mut body = json!({});
            if !macs.is_empty() {
                body["macs"] = json!(macs);
            }
            if let Some(p) = power {
                body["power"] = client::power_settings(&p, &power_args)?;
            }
            if !kernel_args.is_empty() || no_kernel_args {
                body["kernelArgs"] = json!(kernel_args);
            }
            if body.as_object().is_some_and(serde_json::Map::is_empty) {
                anyhow::bail!("nothing to change: give --mac, --power, --kernel-arg or --no-kernel-args");
            }
            let v = client.connect()?.call(Method::PUT, &format!("/dedicated/server/{name}"), Some(&body)).await?;
            println!("changed {name}: {} {} {}", v["macs"], v["power"]["kind"], v["kernelArgs"]);
            Ok(0)
        }
        Command::Server { command: ServerCommand::Delete { name, force }, client } => {
            let path = format!("/dedicated/server/{name}{}", if force { "?force=true" } else { "" });
            let v = client.connect()?.call(Method::DELETE, &path, None).await?;
            println!("{}", v["message"].as_str().unwrap_or("deleted"));
            Ok(0)
        }
        Command::Server { command: ServerCommand::Adopt { mac, name, setup }, client } => {
            let body = setup.body(&name)?;
            let path = format!("/dedicated/discovered/{mac}/adopt");
            let v = client.connect()?.call(Method::POST, &path, Some(&body)).await?;
            println!("adopted {mac} as {} ({})", v["serviceName"].as_str().unwrap_or(&name), v["macs"]);
            Ok(0)
        }
        Command::Server { command: ServerCommand::Forget { mac }, client } => {
            let v = client.connect()?.call(Method::DELETE, &format!("/dedicated/discovered/{mac}"), None).await?;
            println!("{}", v["message"].as_str().unwrap_or("forgotten"));
            Ok(0)
        }
        Command::Servers { discovered, out, client } => {
            // A list of names (or MACs), then each item at LIST/NAME.
            let (list, table): (_, fn(&[Value]) -> String) = match discovered {
                true => ("/dedicated/discovered", discovered_table),
                false => ("/dedicated/server", servers_table),
            };
            let client = client.connect()?;
            let ids = client.call(Method::GET, list, None).await?;
            let mut items = Vec::new();
            for id in ids.as_array().into_iter().flatten() {
                let id = id.as_str().unwrap_or_default();
                items.push(client.call(Method::GET, &format!("{list}/{id}"), None).await?);
            }
            output::print(out.output, &Value::Array(items.clone()), || table(&items))?;
            Ok(0)
        }
        Command::Deploy(a) => deploy(a).await,
        Command::Status { name, follow, out, client } => status(&client.connect()?, &name, follow, out).await,
        Command::Cancel { name, client } => cancel(&client.connect()?, &name).await,
        Command::Inspect { name, client } => {
            let path = format!("/dedicated/server/{name}/inspect");
            match client.connect()?.call(Method::POST, &path, None).await {
                Ok(v) => {
                    let said = v["message"].as_str().unwrap_or("inspecting");
                    if v["powerCycle"] == "manual" {
                        eprintln!("{said}");
                    } else {
                        println!("{said}");
                    }
                    Ok(0)
                }
                Err(e) => match e.power_failure(&name) {
                    Some(message) => {
                        eprintln!("error: {message}");
                        Ok(EXIT_POWER)
                    }
                    None => Err(e.into()),
                },
            }
        }
        Command::Logs { name, deployment, follow, out, client } => {
            logs(&client.connect()?, &name, deployment, follow, out).await
        }
        Command::Power { action, name, force, out, client } => {
            power(&client.connect()?, action, &name, force, out).await
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "byoi", &mut std::io::stdout());
            Ok(0)
        }
        Command::Manpages { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing into {}", dir.display()))?;
            println!("manual pages written to {}", dir.display());
            Ok(0)
        }
        Command::Credentials { command, client } => credentials(&client.connect()?, command).await,
        Command::Db { command: DbCommand::Backup { file, data_dir } } => {
            // The copy holds every secret the database does.
            byoi_controller::datadir::private_umask();
            let from = data_dir.join(byoi_controller::db::backup::FILE_NAME);
            let b = byoi_controller::db::backup::backup(&from, &file)?;
            println!(
                "backed up {} to {}: schema {}, {} servers, {} deployments",
                from.display(),
                file.display(),
                b.schema,
                b.servers,
                b.deployments
            );
            Ok(0)
        }
    }
}

async fn credentials(client: &client::Client, cmd: CredentialsCommand) -> anyhow::Result<i32> {
    match cmd {
        CredentialsCommand::Add { name, rules, allowed_ips, application_only } => {
            let rules = rules
                .iter()
                .map(|r| AccessRule::parse(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let mut body = json!({"name": name, "applicationOnly": application_only});
            if !rules.is_empty() {
                body["rules"] = json!(rules);
            }
            if !allowed_ips.is_empty() {
                body["allowedIPs"] = json!(allowed_ips);
            }
            let v = client.call(Method::POST, "/me/api/application", Some(&body)).await?;
            let field = |k: &str| v[k].as_str().map(str::to_owned).with_context(|| format!("the answer lacks {k}"));
            println!("application_key={}", field("applicationKey")?);
            println!("application_secret={}", field("applicationSecret")?);
            if !application_only {
                println!("consumer_key={}", field("consumerKey")?);
            }
            Ok(0)
        }
        CredentialsCommand::List { out } => {
            let apps = client.call(Method::GET, "/me/api/application", None).await?;
            let creds = client.call(Method::GET, "/me/api/credential", None).await?;
            let mut table = Table::new(&["APPLICATION", "KEY", "CREDENTIAL", "STATUS", "RULES", "LAST USE"]);
            let mut listed = Vec::new();
            let mut creds_of: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
            for id in creds.as_array().into_iter().flatten() {
                let c = client.call(Method::GET, &format!("/me/api/credential/{id}"), None).await?;
                creds_of.entry(c["applicationId"].as_i64().unwrap_or(0)).or_default().push(c);
            }
            for id in apps.as_array().into_iter().flatten() {
                let a = client.call(Method::GET, &format!("/me/api/application/{id}"), None).await?;
                let app = [a["name"].as_str().unwrap_or("?"), a["applicationKey"].as_str().unwrap_or("?")];
                let mine = creds_of.remove(&a["applicationId"].as_i64().unwrap_or(0)).unwrap_or_default();
                if mine.is_empty() {
                    table.row([app[0], app[1], "-", "-", "-", "-"]);
                }
                let mut entry = a.clone();
                entry["credentials"] = Value::Array(mine.clone());
                listed.push(entry);
                for c in mine {
                    let rules: Vec<String> = c["rules"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| {
                            format!("{}:{}", r["method"].as_str().unwrap_or("?"), r["path"].as_str().unwrap_or("?"))
                        })
                        .collect();
                    table.row([
                        app[0].to_owned(),
                        app[1].to_owned(),
                        c["credentialId"].to_string(),
                        c["status"].as_str().unwrap_or("?").to_owned(),
                        rules.join(","),
                        c["lastUse"].as_str().unwrap_or("never").to_owned(),
                    ]);
                }
            }
            output::print(out.output, &Value::Array(listed), || table.to_string())?;
            Ok(0)
        }
        CredentialsCommand::Revoke { name: Some(name), .. } => {
            let apps = client.call(Method::GET, "/me/api/application", None).await?;
            for id in apps.as_array().into_iter().flatten() {
                let a = client.call(Method::GET, &format!("/me/api/application/{id}"), None).await?;
                if a["name"] == name.as_str() {
                    client.call(Method::DELETE, &format!("/me/api/application/{id}"), None).await?;
                    println!("revoked application {name} and its consumer keys");
                    return Ok(0);
                }
            }
            anyhow::bail!("no application named {name}")
        }
        CredentialsCommand::Revoke { name: None, credential } => {
            let id = credential.context("name an application or --credential ID")?;
            client.call(Method::DELETE, &format!("/me/api/credential/{id}"), None).await?;
            println!("revoked credential {id}");
            Ok(0)
        }
        CredentialsCommand::Validate { link, refuse } => {
            let token = credential_token(&link);
            let body = json!({"credentialToken": token, "action": if refuse { "refuse" } else { "validate" }});
            let c = client.call(Method::POST, "/me/api/credential/validate", Some(&body)).await?;
            println!("credential {}: {}", c["credentialId"], c["status"].as_str().unwrap_or("?"));
            Ok(0)
        }
    }
}

/// The credentialToken of a validation URL, or the argument as it is.
fn credential_token(arg: &str) -> &str {
    arg.split_once("credentialToken=").map_or(arg, |(_, t)| t.split('&').next().unwrap_or(t))
}

/// `byoi servers`' table: a server a row, with its latest deployment.
fn servers_table(servers: &[Value]) -> String {
    let mut t = Table::new(&["NAME", "MACS", "POWER", "BOOT", "DEPLOYMENT", "LAST SEEN"]);
    for s in servers {
        t.row([
            cell(&s["serviceName"]),
            cell(&s["macs"]),
            cell(&s["power"]["kind"]),
            cell(&s["bootTarget"]),
            s["deployments"].get(0).map_or_else(|| "-".to_owned(), deployment_cell),
            cell(&s["lastSeen"]),
        ]);
    }
    t.to_string()
}

/// `byoi servers --discovered`' table: a machine a row, with its hardware.
fn discovered_table(machines: &[Value]) -> String {
    let mut t = Table::new(&["MAC", "STATE", "ADDRESS", "FIRMWARE", "MEMORY", "DISKS", "NICS", "LAST SEEN"]);
    for m in machines {
        let hw = &m["hardware"];
        let memory = match hw["memorySize"]["value"].as_u64() {
            Some(mib) if mib >= 16 << 10 => format!("{} GiB", (mib + 512) >> 10),
            Some(mib) => format!("{mib} MiB"),
            None => "-".to_owned(),
        };
        let disks: Vec<String> =
            hw["diskGroups"].as_array().into_iter().flatten().map(|g| cell(&g["description"])).collect();
        let nics: Vec<String> = hw["nics"].as_array().into_iter().flatten().map(|n| cell(&n["mac"])).collect();
        t.row([
            cell(&m["mac"]),
            cell(&m["state"]),
            cell(&m["address"]),
            cell(&hw["bootMode"]),
            memory,
            if disks.is_empty() { "-".to_owned() } else { disks.join(", ") },
            if nics.is_empty() { "-".to_owned() } else { nics.join(", ") },
            cell(&m["lastSeen"]),
        ]);
    }
    t.to_string()
}

/// A deployment in a cell: `doing writing 42%`, `done`, `error (checksum)`.
fn deployment_cell(d: &Value) -> String {
    match d["status"].as_str().unwrap_or("?") {
        "doing" => match d["percent"].as_f64() {
            Some(p) => format!("doing {} {p:.0}%", cell(&d["stage"])),
            None => format!("doing {}", cell(&d["stage"])),
        },
        status => match d["errorCode"].as_str() {
            Some(code) => format!("{status} ({code})"),
            None => status.to_owned(),
        },
    }
}

/// `byoi server show`'s table: a field a row.
fn server_table(s: &Value) -> String {
    let mut t = Table::new(&["FIELD", "VALUE"]);
    let agent = match (s["agentVersion"].as_str(), s["versionSkew"].as_bool()) {
        (Some(v), Some(true)) => format!("{v} (not this controller's version)"),
        (Some(v), _) => v.to_owned(),
        (None, _) => "-".to_owned(),
    };
    let latest = s["deployments"].get(0);
    let rows = [
        ("name", cell(&s["serviceName"])),
        ("macs", cell(&s["macs"])),
        ("power", cell(&s["power"]["kind"])),
        ("kernel args", cell(&s["kernelArgs"])),
        ("boot", cell(&s["bootTarget"])),
        ("state", cell(&s["state"])),
        ("firmware", cell(&s["firmware"])),
        ("os", cell(&s["os"])),
        ("last seen", cell(&s["lastSeen"])),
        ("agent", agent),
        ("rescue host key", cell(&s["sshHostKey"])),
        ("deployments", s["deployments"].as_array().map_or(0, Vec::len).to_string()),
        ("latest", latest.map_or_else(|| "-".to_owned(), deployment_cell)),
        ("latest message", latest.map_or_else(|| "-".to_owned(), |d| cell(&d["message"]))),
        ("latest image", latest.map_or_else(|| "-".to_owned(), |d| cell(&d["url"]))),
    ];
    for (field, value) in rows {
        t.row([field.to_owned(), value]);
    }
    t.to_string()
}

async fn deploy(a: DeployArgs) -> anyhow::Result<i32> {
    let mut body = json!({"URL": a.url});
    if let Some(c) = &a.checksum {
        let (algo, hex) = c.split_once(':').context("--checksum is ALGO:HEX")?;
        body["checkSumType"] = json!(algo);
        body["checkSum"] = json!(hex);
    }
    if let Some(t) = &a.image_type {
        body["type"] = json!(t);
    }
    if let Some(d) = &a.ova_disk {
        body["ovaDisk"] = json!(d);
    }
    if let Some(g) = a.disk_group {
        body["diskGroupId"] = json!(g);
    }
    if let Some(l) = &a.efi_loader {
        body["efiBootloaderPath"] = json!(l);
    }
    let headers: BTreeMap<String, String> = a
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .context("--header is 'Name: value'")
        })
        .collect::<anyhow::Result<_>>()?;
    if !headers.is_empty() {
        body["httpHeaders"] = json!(headers);
    }
    let configdrive = a.hostname.is_some()
        || !a.ssh_keys.is_empty()
        || a.user_data.is_some()
        || !a.meta.is_empty()
        || a.network_data.is_some()
        || a.configdrive_format.is_some();
    if configdrive {
        let mut cd = json!({"enable": true, "hostname": a.hostname});
        // OVHcloud's one `sshKey`, then our `sshKeys` for more.
        if let Some((first, more)) = a.ssh_keys.split_first() {
            cd["sshKey"] = json!(first);
            if !more.is_empty() {
                cd["sshKeys"] = json!(more);
            }
        }
        if let Some(f) = &a.user_data {
            let data = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            cd["userDataBase64"] = json!(base64::engine::general_purpose::STANDARD.encode(data));
        }
        if let Some(f) = &a.network_data {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {} (UTF-8 text)", f.display()))?;
            cd["networkData"] = json!(text);
        }
        if let Some(format) = &a.configdrive_format {
            cd["format"] = json!(format);
        }
        let meta: BTreeMap<&str, &str> = a
            .meta
            .iter()
            .map(|m| m.split_once('=').with_context(|| format!("--meta {m:?} is not KEY=VALUE")))
            .collect::<anyhow::Result<_>>()?;
        cd["userMetadatas"] = json!(meta);
        body["configdrive"] = cd;
    }
    let client = a.client.connect()?;
    let path = format!("/dedicated/server/{}/bringYourOwnImage", a.name);
    let v = match client.call(Method::POST, &path, Some(&body)).await {
        Ok(v) => v,
        Err(e) => match e.power_failure(&a.name) {
            Some(message) => {
                eprintln!("error: {message}");
                return Ok(EXIT_POWER);
            }
            None => return Err(e.into()),
        },
    };
    println!("deployment {} on {}: {} ({})", v["deploymentId"], a.name, v["status"], v["message"]);
    let powered = after_power_cycle(&client, &a.name, &v, "to start the deployment").await?;
    if !a.wait || powered != 0 {
        return Ok(powered);
    }
    let followed = status(&client, &a.name, true, OutputArgs { output: output::Format::Table });
    match a.timeout {
        None => followed.await,
        Some(secs) => match tokio::time::timeout(Duration::from_secs(secs), followed).await {
            Ok(code) => code,
            Err(_) => {
                eprintln!("\ngave up waiting after {secs} s; the deployment goes on: byoi status {} --follow", a.name);
                Ok(EXIT_TIMEOUT)
            }
        },
    }
}

/// `byoi power ACTION NAME`: exit 3 when the driver fails (the
/// controller's 502), with its words.
async fn power(
    client: &client::Client,
    verb: PowerVerb,
    name: &str,
    force: bool,
    out: OutputArgs,
) -> anyhow::Result<i32> {
    let path = format!("/dedicated/server/{name}/power");
    let action = match verb {
        PowerVerb::Status if force => anyhow::bail!("--force is for off and cycle"),
        PowerVerb::Status => None,
        PowerVerb::On => Some("on"),
        PowerVerb::Off => Some("off"),
        PowerVerb::Cycle => Some("cycle"),
    };
    let answer = match action {
        None => client.call(Method::GET, &path, None).await,
        Some(action) => client.call(Method::POST, &path, Some(&json!({"action": action, "force": force}))).await,
    };
    let v = match answer {
        Ok(v) => v,
        Err(e) => match e.power_failure(name) {
            Some(message) => {
                eprintln!("error: {message}");
                return Ok(EXIT_POWER);
            }
            None => return Err(e.into()),
        },
    };
    output::print(out.output, &v, || match action {
        None => {
            let mut t = Table::new(&["NAME", "DRIVER", "STATE"]);
            t.row([name.to_owned(), cell(&v["kind"]), cell(&v["state"])]);
            t.to_string()
        }
        Some(_) => format!("{}\n", v["message"].as_str().unwrap_or("done")),
    })?;
    Ok(0)
}

async fn cancel(client: &client::Client, name: &str) -> anyhow::Result<i32> {
    let v = client.call(Method::DELETE, &format!("/dedicated/server/{name}/bringYourOwnImage"), None).await?;
    println!("{}", v["message"].as_str().unwrap_or("cancelled"));
    after_power_cycle(client, name, &v, "to boot into rescue").await
}

/// Tells the operator what the controller's power cycle leaves to them,
/// from the answer `v` to a POST or DELETE of `…/bringYourOwnImage`; `then`
/// says what netbooting achieves. Controllers that do not say `powerCycle`
/// are asked for the server's power driver.
async fn after_power_cycle(client: &client::Client, name: &str, v: &Value, then: &str) -> anyhow::Result<i32> {
    let manual = match PowerCycle::of_answer(v) {
        Some(PowerCycle::Failed(e)) => {
            eprintln!("could not power-cycle {name}: {e}; reboot it by hand");
            return Ok(EXIT_POWER);
        }
        Some(PowerCycle::Done | PowerCycle::Skipped) => false,
        Some(PowerCycle::Manual) => true,
        // Such a controller cannot say whether it skipped the cycle for an
        // agent that was waiting; the advice to reboot is then needless.
        None => match client.call(Method::GET, &format!("/dedicated/server/{name}"), None).await {
            Ok(s) => s["power"]["kind"] == "manual",
            Err(e) => {
                eprintln!("could not tell whether {name} has manual power: {e:#}");
                false
            }
        },
    };
    if manual {
        eprintln!("{name} has manual power: reboot it by hand now; it must netboot (PXE) {then}");
    }
    Ok(0)
}

async fn status(client: &client::Client, name: &str, follow: bool, out: OutputArgs) -> anyhow::Result<i32> {
    let path = format!("/dedicated/server/{name}/bringYourOwnImage");
    let events = format!("/dedicated/server/{name}/events");
    let mut show = Shower::new(name, out, follow);
    let mut failures = 0;
    let mut streams = true;
    loop {
        let v = match client.call(Method::GET, &path, None).await {
            Ok(v) => v,
            // A controller restart must not look like a failed deployment.
            Err(e) if follow && failures < 30 => {
                failures += 1;
                show.say(&format!("{e:#}; retrying"));
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if !follow || v["status"] != "doing" {
            return show.end(client, &v).await;
        }
        show.running(&v)?;
        if !streams {
            // A controller without `…/events`: look again in a second.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // The controller's events until the deployment ends; then the
        // loop reads its last state.
        let followed = client
            .events(&events, |event, data| {
                if event == "deployment" {
                    if let Ok(v) = serde_json::from_str::<Value>(data) {
                        return show.running(&v).is_ok();
                    }
                }
                true
            })
            .await;
        match followed {
            Ok(()) => failures = 0,
            Err(client::Error::Api { status, .. })
                if status == http::StatusCode::NOT_FOUND || status == http::StatusCode::METHOD_NOT_ALLOWED =>
            {
                streams = false;
            }
            Err(e) if failures < 30 => {
                failures += 1;
                show.say(&format!("{e:#}; retrying"));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `byoi logs NAME`: the kept lines; with --follow, the running
/// deployment's new lines as the controller's event stream brings them.
async fn logs(
    client: &client::Client,
    name: &str,
    deployment: Option<i64>,
    follow: bool,
    out: OutputArgs,
) -> anyhow::Result<i32> {
    let query = deployment.map(|d| format!("?deployment={d}")).unwrap_or_default();
    let v = client.call(Method::GET, &format!("/dedicated/server/{name}/logs{query}"), None).await?;
    let lines = v["lines"].as_array().cloned().unwrap_or_default();
    if !follow {
        output::print(out.output, &v, || {
            let mut t = Table::new(LOG_COLUMNS);
            for l in &lines {
                t.row(log_cells(l));
            }
            t.to_string()
        })?;
        return Ok(0);
    }
    // Followed: a line each as it comes (a JSON object a line, or a YAML
    // document each), the table's columns without its alignment.
    let show = |l: &Value| -> anyhow::Result<()> {
        match out.output {
            output::Format::Table => {
                println!("{}", log_cells(l).join("  "));
                std::io::stdout().flush()?;
                Ok(())
            }
            format => output::print_streamed(format, l),
        }
    };
    if out.output == output::Format::Table {
        println!("{}", LOG_COLUMNS.join("  "));
    }
    let mut last = 0;
    for l in &lines {
        show(l)?;
        last = last.max(l["id"].as_i64().unwrap_or(0));
    }
    let mut failures = 0;
    loop {
        let followed = client
            .events(&format!("/dedicated/server/{name}/events"), |event, data| {
                let Ok(l) = serde_json::from_str::<Value>(data) else { return true };
                let id = l["id"].as_i64().unwrap_or(0);
                if event == "log" && id > last {
                    last = id;
                    return show(&l).is_ok();
                }
                true
            })
            .await;
        match followed {
            Ok(()) => return Ok(0),
            Err(e @ client::Error::Api { .. }) => return Err(e.into()),
            Err(e) if failures < 30 => {
                failures += 1;
                eprintln!("{e:#}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `byoi logs`' columns.
const LOG_COLUMNS: &[&str] = &["AT", "LEVEL", "SOURCE", "MESSAGE"];

/// A log line's cells, in [`LOG_COLUMNS`]' order.
fn log_cells(l: &Value) -> Vec<String> {
    // What an agent wrote reaches a terminal: no escape sequences.
    let printable = |v: &Value| v.as_str().unwrap_or("").replace(|c: char| c.is_control(), "\u{fffd}");
    vec![cell(&l["at"]), cell(&l["level"]), printable(&l["target"]), printable(&l["message"])]
}

/// How `status` shows a deployment as it goes: an indicatif bar on a
/// terminal's stderr, else a line per change; with `-o json|yaml`, the
/// controller's view at each change.
struct Shower {
    name: String,
    out: OutputArgs,
    bar: Option<indicatif::ProgressBar>,
    first: Option<(Instant, i64)>,
    last: Option<Value>,
    follow: bool,
}

impl Shower {
    fn new(name: &str, out: OutputArgs, follow: bool) -> Shower {
        let bar = (follow && out.output == output::Format::Table && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::no_length();
            bar.set_style(progress_style());
            bar
        });
        Shower { name: name.to_owned(), out, bar, first: None, last: None, follow }
    }

    /// A line for the operator on stderr, above the bar.
    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Shows a state of the running deployment, if it changed.
    fn running(&mut self, v: &Value) -> anyhow::Result<()> {
        if self.last.as_ref() == Some(v) {
            return Ok(());
        }
        self.last = Some(v.clone());
        if self.out.output != output::Format::Table {
            return output::print_streamed(self.out.output, v);
        }
        let done = v["bytesDone"].as_i64().unwrap_or(0);
        match &self.bar {
            Some(bar) => {
                if let Some(t) = v["bytesTotal"].as_i64().filter(|t| *t > 0) {
                    bar.set_length(t.unsigned_abs());
                }
                bar.set_position(done.unsigned_abs());
                bar.set_message(format!("{}: {}", self.name, v["stage"].as_str().unwrap_or("?")));
            }
            None => {
                println!("{}", progress_line(v, done, v["bytesTotal"].as_i64(), &mut self.first));
                std::io::stdout().flush().ok();
            }
        }
        Ok(())
    }

    /// Shows the last state; the exit status: 1 if the deployment failed.
    async fn end(&mut self, client: &client::Client, v: &Value) -> anyhow::Result<i32> {
        let code = if v["status"] == "error" { EXIT_FAILED } else { 0 };
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        match self.out.output {
            output::Format::Table => {
                let done = v["bytesDone"].as_i64().unwrap_or(0);
                println!("{}", progress_line(v, done, v["bytesTotal"].as_i64(), &mut self.first));
                let server = client.call(Method::GET, &format!("/dedicated/server/{}", self.name), None).await?;
                if let Some(fp) = server["sshHostKey"].as_str() {
                    println!("rescue SSH host key: {fp}");
                }
            }
            // Followed: the stream's last document; else the answer.
            format if self.follow => {
                if self.last.as_ref() != Some(v) {
                    output::print_streamed(format, v)?;
                }
            }
            format => output::print(format, v, String::new)?,
        }
        Ok(code)
    }
}

/// The bar of `status --follow` on a terminal: the server and stage, then
/// indicatif's bar, bytes, rate and time left.
fn progress_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(PROGRESS_TEMPLATE)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("#> ")
}

/// [`progress_style`]'s template.
const PROGRESS_TEMPLATE: &str =
    "{msg} [{bar:30}] {percent:>3}% {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}";

/// `doing downloading [#####     ] 48.2% 512/1062 MiB 85.3 MB/s ETA 6s`.
fn progress_line(v: &Value, done: i64, total: Option<i64>, first: &mut Option<(Instant, i64)>) -> String {
    let status = v["status"].as_str().unwrap_or("?");
    let stage = v["stage"].as_str().unwrap_or("?");
    if status != "doing" {
        let code = v["errorCode"].as_str().map(|c| format!(" [{c}]")).unwrap_or_default();
        return format!("{status}: {}{code}", v["message"].as_str().unwrap_or(""));
    }
    let now = Instant::now();
    let (t0, b0) = *first.get_or_insert((now, done));
    let secs = now.duration_since(t0).as_secs_f64();
    let rate = if secs > 0.5 { (done - b0) as f64 / secs } else { 0.0 };
    match total {
        Some(t) if t > 0 => {
            let frac = (done as f64 / t as f64).clamp(0.0, 1.0);
            let filled = (frac * 30.0) as usize;
            let eta = if rate > 0.0 { format!(" ETA {:.0}s", (t - done) as f64 / rate) } else { String::new() };
            format!(
                "{status} {stage} [{}{}] {:5.1}% {}/{} MiB {:.1} MB/s{eta}",
                "#".repeat(filled),
                " ".repeat(30 - filled),
                frac * 100.0,
                done >> 20,
                t >> 20,
                rate / 1e6
            )
        }
        _ => format!("{status} {stage} {} MiB {:.1} MB/s", done >> 20, rate / 1e6),
    }
}

impl ClientArgs {
    /// The token from --token, $BYOI_API_TOKEN, the profile, or
    /// DATA_DIR/api-token.
    fn token(&self, profile: &profile::Profile) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        if let Ok(t) = std::env::var("BYOI_API_TOKEN") {
            if !t.is_empty() {
                return Ok(t);
            }
        }
        if let Some(t) = profile.token()? {
            return Ok(t);
        }
        let path = self.data_dir.join("api-token");
        std::fs::read_to_string(&path).map(|t| t.trim().to_owned()).with_context(|| {
            format!(
                "no API token: set one in the profile (~/.config/byoi/config.toml), set BYOI_API_TOKEN, \
                 pass --token, or make {} readable",
                path.display()
            )
        })
    }

    /// A client of the controller: flags and variables first, then the
    /// profile, then the defaults.
    fn connect(&self) -> anyhow::Result<client::Client> {
        let profile = profile::load(self.profile.as_deref())?;
        let controller = self.controller.clone().or_else(|| profile.controller.clone());
        let ca_file = self.ca_file.clone().or_else(|| profile.ca_file.clone());
        let token = self.token(&profile)?;
        Ok(client::Client::new(controller.as_deref().unwrap_or(DEFAULT_CONTROLLER), &token, ca_file.as_deref())?)
    }
}
