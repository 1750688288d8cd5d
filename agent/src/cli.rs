//! Argument parsing and output of `byoi-agent`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use std::path::Path;

use byoi_agent::efivars;
use byoi_agent::finish::Finishing;
use byoi_agent::plan::{plan, Host};
use byoi_agent::progress::Progress;
use byoi_agent::source::SourceOptions;
use byoi_agent::target::DiskTarget;
use byoi_agent::{deploy, DeployError, Deployed};
use byoi_wire::spec::{Blob, ConfigDriveFormat, ConfigDriveSpec, OvaDisk, SpecError, Urls};
use byoi_wire::{BootMode, Checksum, DeploySpec, Event, ImageType, Status};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "byoi-agent", version, about = "Streams disk images onto disks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Downloads an image and writes it to a disk, verified, in one pass.
    Deploy(DeployArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TypeArg {
    Raw,
    Qcow2,
    Ova,
}

#[derive(Debug, clap::Args)]
struct DeployArgs {
    /// Image URL: http://, https:// or file://.
    #[arg(long)]
    url: String,
    /// Disk to write: a block device, or an existing regular file (never
    /// resized).
    #[arg(long)]
    target: PathBuf,
    /// Image type; detected from the magic bytes when absent, and must
    /// match them when given.
    #[arg(long = "type", value_enum)]
    image_type: Option<TypeArg>,
    /// The disk of a multi-disk OVA to deploy: its number (from 1, in the
    /// OVF's order), its OVF disk id or its file name.
    #[arg(long, value_name = "N|ID|FILE")]
    ova_disk: Option<String>,
    /// Expected checksum of the bytes served, ALGO:HEX with ALGO one of
    /// md5, sha1, sha256, sha512.
    #[arg(long, value_name = "ALGO:HEX", value_parser = parse_checksum)]
    checksum: Option<Checksum>,
    /// Extra HTTP header, 'Name: value'; repeatable.
    #[arg(long = "header", value_name = "'NAME: VALUE'", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Extra trust roots (PEM) for HTTPS, besides the built-in web PKI.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Write to a disk even if it has mounted partitions or holders.
    #[arg(long)]
    force: bool,
    /// Print progress and the result as JSON lines on stdout.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for a connection.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    connect_timeout: f64,
    /// Seconds of silence from the server before the connection counts as
    /// broken.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    read_timeout: f64,
    /// Attempts per failure streak (connecting, or resuming a broken
    /// download).
    #[arg(long, value_name = "N", default_value_t = 8)]
    retries: u32,
    /// Seconds before the first retry; doubles per attempt up to 30 s.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.5)]
    retry_delay: f64,
    /// Seconds the whole download may take, retries and resumes included.
    #[arg(long, value_name = "SECONDS", default_value_t = byoi_agent::source::DEFAULT_DEADLINE.as_secs_f64())]
    deadline: f64,

    /// Add a cloud-init ConfigDrive partition (implied by the options below).
    #[arg(long, help_heading = "ConfigDrive")]
    configdrive: bool,
    /// ConfigDrive layout: OpenStack (label config-2) or NoCloud (label cidata).
    #[arg(long, value_enum, default_value_t = DriveFormat::Openstack, help_heading = "ConfigDrive")]
    configdrive_format: DriveFormat,
    /// Host name.
    #[arg(long, help_heading = "ConfigDrive")]
    hostname: Option<String>,
    /// SSH public key; repeatable.
    #[arg(long = "ssh-key", value_name = "KEY", help_heading = "ConfigDrive")]
    ssh_keys: Vec<String>,
    /// File with user data (cloud-config, script…), copied verbatim.
    #[arg(long, value_name = "FILE", help_heading = "ConfigDrive")]
    user_data: Option<PathBuf>,
    /// Metadata KEY=VALUE; repeatable (OVH's userMetadatas).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_meta, help_heading = "ConfigDrive")]
    meta: Vec<(String, String)>,
    /// cloud-init instance id; default: a fresh UUID.
    #[arg(long, help_heading = "ConfigDrive")]
    instance_id: Option<String>,
    /// OpenStack network_data.json (NoCloud: network-config), verbatim.
    #[arg(long, value_name = "FILE", help_heading = "ConfigDrive")]
    network_data: Option<PathBuf>,

    /// The server's firmware; auto: UEFI if this host booted with UEFI.
    #[arg(long, value_enum, default_value_t = FirmwareArg::Auto, help_heading = "Boot")]
    firmware: FirmwareArg,
    /// Loader on the EFI system partition, e.g. '\EFI\debian\shimx64.efi'
    /// (OVH's efiBootloaderPath); default: found on the partition.
    #[arg(long, value_name = "PATH", help_heading = "Boot")]
    efi_loader: Option<String>,
    /// Directory of EFI variables to write the boot entry to (efivarfs
    /// format); default: the host's, when the target is a block device on a
    /// UEFI host.
    #[arg(long, value_name = "DIR", help_heading = "Boot")]
    efivars: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DriveFormat {
    Openstack,
    Nocloud,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FirmwareArg {
    Uefi,
    Legacy,
    Auto,
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not of the form KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn parse_checksum(s: &str) -> Result<Checksum, String> {
    s.parse().map_err(|e: SpecError| e.to_string())
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once(':').ok_or_else(|| format!("{s:?} is not of the form 'Name: value'"))?;
    if name.trim().is_empty() {
        return Err(format!("{s:?} has an empty header name"));
    }
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// Runs the command line; returns the exit code (0 ok, 1 deploy failed,
/// 2 usage).
pub fn main() -> i32 {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match cli.command {
        Command::Deploy(args) => run_deploy(args),
    }
}

fn run_deploy(args: DeployArgs) -> i32 {
    let progress = Arc::new(Progress::default());
    let json = args.json;
    let stop = Arc::new(AtomicBool::new(false));
    let reporter = spawn_reporter(progress.clone(), stop.clone(), json);
    let result = deploy_with(&args, &progress);
    stop.store(true, Ordering::Relaxed);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    match result {
        Ok(done) => {
            let message = summary(&args, &done);
            if json {
                emit(&Event::Result { status: Status::Done, code: None, message });
            } else {
                println!("{message}");
            }
            0
        }
        Err(e) => {
            if json {
                emit(&Event::Result { status: Status::Error, code: Some(e.code()), message: e.to_string() });
            }
            eprintln!("error: {e}");
            1
        }
    }
}

/// The spec the options describe, validated.
fn spec(args: &DeployArgs) -> Result<DeploySpec, DeployError> {
    let read = |what: &str, p: &PathBuf| {
        std::fs::read(p)
            .map(Blob)
            .map_err(|e| DeployError::InvalidRequest(format!("cannot read {what} {}: {e}", p.display())))
    };
    let wanted = args.configdrive
        || args.hostname.is_some()
        || !args.ssh_keys.is_empty()
        || args.user_data.is_some()
        || !args.meta.is_empty()
        || args.network_data.is_some()
        || args.instance_id.is_some();
    let configdrive = if wanted {
        Some(ConfigDriveSpec {
            format: match args.configdrive_format {
                DriveFormat::Openstack => ConfigDriveFormat::OpenStack,
                DriveFormat::Nocloud => ConfigDriveFormat::NoCloud,
            },
            instance_id: args.instance_id.clone(),
            hostname: args.hostname.clone(),
            ssh_keys: args.ssh_keys.clone(),
            user_data: args.user_data.as_ref().map(|p| read("--user-data", p)).transpose()?,
            meta: args.meta.iter().cloned().collect(),
            network_data: args.network_data.as_ref().map(|p| read("--network-data", p)).transpose()?,
        })
    } else {
        None
    };
    let spec = DeploySpec {
        url: args.url.clone(),
        checksum: args.checksum.clone(),
        image_type: args.image_type.map(|t| match t {
            TypeArg::Raw => ImageType::Raw,
            TypeArg::Qcow2 => ImageType::Qcow2,
            TypeArg::Ova => ImageType::Ova,
        }),
        ova_disk: args.ova_disk.as_deref().map(OvaDisk::parse),
        headers: args.headers.iter().cloned().collect(),
        configdrive,
        efi_loader: args.efi_loader.clone(),
        firmware: match args.firmware {
            FirmwareArg::Uefi => Some(BootMode::Uefi),
            FirmwareArg::Legacy => Some(BootMode::Legacy),
            FirmwareArg::Auto => None,
        },
    };
    spec.validate(Urls::RemoteOrFile)?;
    Ok(spec)
}

/// This host, as far as the deployment onto `args.target` goes.
fn host(args: &DeployArgs, spec: &DeploySpec, target_is_block: bool) -> Host {
    let host_uefi = Path::new("/sys/firmware/efi").exists();
    let uefi = spec.firmware.map_or(host_uefi, |f| f == BootMode::Uefi);
    // Firmware variables are the host's: only touched when the disk is the
    // host's own and the host is UEFI, or when a directory is named.
    let efivars = match &args.efivars {
        _ if !uefi => None,
        Some(dir) => Some(dir.clone()),
        None if target_is_block && host_uefi => Some(PathBuf::from(efivars::EFIVARFS)),
        None => None,
    };
    let efi_disk = match &efivars {
        Some(_) if target_is_block => efivars::disk_prefix_of(&args.target).unwrap_or_default(),
        _ => Vec::new(),
    };
    let efivars = efivars.as_deref().map(efivars::open);
    Host { firmware: Some(if host_uefi { BootMode::Uefi } else { BootMode::Legacy }), efivars, efi_disk }
}

fn deploy_with(args: &DeployArgs, progress: &Arc<Progress>) -> Result<(Deployed, Finishing), DeployError> {
    let spec = spec(args)?;
    let target = DiskTarget::open(&args.target, args.force)?;
    let source = SourceOptions {
        ca_file: args.ca_file.clone(),
        connect_timeout: seconds(args.connect_timeout),
        read_timeout: seconds(args.read_timeout),
        attempts: args.retries.max(1),
        initial_backoff: seconds(args.retry_delay),
        deadline: seconds(args.deadline),
        ..SourceOptions::default()
    };
    let (req, mut finish) = plan(&spec, &host(args, &spec, target.is_block_device()), source);
    let done = deploy(&req, &target, progress, Some(&mut finish))?;
    Ok((done, finish))
}

fn summary(args: &DeployArgs, (d, f): &(Deployed, Finishing)) -> String {
    let secs = d.elapsed.as_secs_f64().max(1e-3);
    let mut extra = String::new();
    if let Some(o) = &f.outcome {
        if o.gpt_relocated {
            extra.push_str("; backup GPT moved to the end of the disk");
        }
        if let Some(n) = o.configdrive_partition {
            extra.push_str(&format!("; ConfigDrive on partition {n}"));
        }
        if let Some(l) = &o.loader {
            extra.push_str(&format!("; UEFI loader {l}"));
        }
        if let Some(b) = o.boot_entry {
            extra.push_str(&format!(" (Boot{b:04X}, BootNext)"));
        }
    }
    if let Some(ova) = d.ova.as_ref().filter(|o| !o.verified.is_empty()) {
        extra.push_str(&format!("; manifest verified for {}", ova.verified.join(", ")));
    }
    format!(
        "deployed {} ({}, {} bytes) to {} in {:.1} s ({:.0} MB/s); {} bytes written, {} zeroed{}{extra}",
        byoi_agent::source::RedactedUrl::new(&args.url),
        d.format,
        d.image_size,
        args.target.display(),
        secs,
        d.image_size as f64 / secs / 1e6,
        d.writes.data_bytes,
        d.writes.zeroed_bytes,
        d.digest.as_ref().map(|h| format!(", checksum {h} verified")).unwrap_or_default()
    )
}

fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(event) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Reports progress once a second: JSON lines on stdout, or a status line
/// on stderr when it is a terminal.
fn spawn_reporter(progress: Arc<Progress>, stop: Arc<AtomicBool>, json: bool) -> Option<thread::JoinHandle<()>> {
    let tty = std::io::stderr().is_terminal();
    if !json && !tty {
        return None;
    }
    thread::Builder::new()
        .name("byoi-progress".into())
        .spawn(move || {
            let report = |progress: &Progress| {
                let (done, total) = progress.bytes();
                if json {
                    emit(&Event::Progress { stage: progress.stage(), bytes_done: done, bytes_total: total });
                } else {
                    let pct =
                        total.map(|t| format!(" {:5.1}%", done as f64 * 100.0 / t.max(1) as f64)).unwrap_or_default();
                    eprint!("\r{:<12} {:>10} MiB{pct}   ", progress.stage().as_str(), done >> 20);
                }
            };
            let mut ticks = 0u32;
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(100));
                ticks += 1;
                if ticks.is_multiple_of(10) {
                    report(&progress);
                }
            }
            report(&progress);
            if !json {
                eprintln!();
            }
        })
        .ok()
}
