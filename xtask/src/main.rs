//! `cargo xtask`: build and test automation (matklad's cargo-xtask pattern).
//! One module per task, each with its options as a clap `Args` struct;
//! this file parses the command line ([`Cli`]) and dispatches. Paths come
//! from `CARGO_MANIFEST_DIR`.

mod bench_fleet;
mod bench_link;
mod bench_workload;
mod deb;
mod image_debian;
mod postgres;
mod python;
mod setup;
mod task_bench;
mod task_demo;
mod task_dist;
mod task_fuzz;
mod task_image;
mod task_initramfs;
mod task_lint;
mod task_loadtest;
mod task_test;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

/// Build, test and demo automation for byoi.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

// One variant per `task_*.rs` module; the doc comments are the help.
#[derive(Debug, Subcommand)]
enum Task {
    /// cargo fmt --check and cargo clippy -D warnings over the workspace
    Lint,
    /// The agent's kernel and initramfs in target/byoi (vmlinuz, initramfs.img, manifest.json)
    Initramfs(task_initramfs::Options),
    /// Netboot a QEMU server from `byoi serve`, deploy the test OS with a ConfigDrive, boot it
    ///
    /// target/demo keeps the logs, the disk and the firmware variables.
    Demo(task_demo::Options),
    /// The demo's power driver (QEMU's QMP)
    Qmp(task_demo::QmpOptions),
    /// The test OS images, in target/byoi/images
    Image(task_image::Options),
    /// The agent against curl, curl|tee|dd, Ironic's stage-and-convert and qemu-img over HTTP
    ///
    /// On a 4 GiB workload served by nginx; results in target/bench/results.json. --link shapes the link
    /// (root); --fleet N runs N agents at once instead (target/bench/fleet.json).
    Bench(task_bench::Options),
    /// The agent's parsers under cargo-fuzz (libFuzzer, ASan, stable with RUSTC_BOOTSTRAP=1)
    ///
    /// A crash is kept in agent/tests/fuzz-regressions/ and fails the task; logs in target/fuzz/logs.
    Fuzz(task_fuzz::Options),
    /// One controller against N simulated agents over the agent protocol, with operators reading
    ///
    /// Prints p50/p99/max per call, errors, the controller's CPU and RSS; results in
    /// target/loadtest/results.json.
    Loadtest(task_loadtest::Options),
    /// Setup, lint, initramfs, tiny images, every test with the QEMU suites (BYOI_E2E=1), the package (dist --check)
    ///
    /// Fails if a QEMU started by the tests is still running when they are done.
    Test(task_test::Options),
    /// The Debian package, target/dist/byoi_VERSION_amd64.deb (controller, agent, hardened unit)
    ///
    /// --check installs it on this machine, runs the controller from its unit, upgrades and purges it.
    Dist(task_dist::Options),
    /// The Python environment of the OVHcloud SDK tests, in target/py (`test` makes it too)
    PythonEnv,
    /// Runs CMD; writes its exit status, peak RSS and CPU time to OUT (used by `bench`)
    #[command(name = "__measure", hide = true)]
    Measure(task_bench::MeasureOptions),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Lint => task_lint::run(),
        Task::Initramfs(o) => task_initramfs::run_task(&o),
        Task::Demo(o) => task_demo::run_task(&o),
        Task::Qmp(o) => task_demo::qmp(&o),
        Task::Image(o) => task_image::run_task(&o),
        Task::Bench(o) => task_bench::run_task(&o),
        Task::Fuzz(o) => task_fuzz::run_task(&o),
        Task::Loadtest(o) => task_loadtest::run_task(&o),
        Task::Test(o) => task_test::run(&o),
        Task::Dist(o) => task_dist::run_task(&o),
        Task::PythonEnv => python::venv().map(|p| println!("{}", p.display())),
        Task::Measure(o) => task_bench::measure(&o),
    }
}

/// A count of at least 1, for clap (`bench --runs`, `fuzz --seconds`).
fn at_least_one<T>(s: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
    T::Err: std::fmt::Display,
{
    let n: T = s.parse().map_err(|e: T::Err| e.to_string())?;
    if n < T::from(1) {
        return Err("must be at least 1".to_owned());
    }
    Ok(n)
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// Runs a command in the workspace root, failing if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.current_dir(root()).status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every task and option that the hand-written parser knew.
    #[test]
    fn every_task_parses() {
        for args in [
            &["lint"][..],
            &["initramfs"],
            &["initramfs", "--flavour", "cloud", "--firmware-dir", "/fw"],
            &["initramfs", "--flavor", "generic"],
            &["initramfs", "--ca-file", "/etc/byoi/ca.pem"],
            &["demo"],
            &["demo", "--bios", "--image", "tiny"],
            &["demo", "--image", "debian"],
            &["qmp", "/tmp/qmp.sock", "cycle"],
            &["image"],
            &["image", "debian"],
            &["bench", "--runs", "1", "--only", "A,N", "--device", "loop", "--no-micro"],
            &["loadtest"],
            &["loadtest", "--agents", "5000", "--seconds", "30", "--database", "postgres://u@h/db"],
            &["fuzz", "--seconds", "5", "--only", "ova"],
            &["test", "--slow"],
            &["python-env"],
            &["dist"],
            &["dist", "--check"],
            &["__measure", "/tmp/out", "--", "bash", "-c", "true --not-an-option"],
        ] {
            let cli = Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()));
            assert!(cli.is_ok(), "{args:?}: {}", cli.unwrap_err());
        }
    }

    #[test]
    fn nonsense_is_refused() {
        for args in [
            &[][..],
            &["build"],
            &["lint", "--fast"],
            &["initramfs", "--flavour", "server"],
            &["initramfs", "--firmware-dir"],
            &["initramfs", "--ca-file"],
            &["demo", "--image", "windows"],
            &["qmp", "/tmp/qmp.sock"],
            &["qmp", "/tmp/qmp.sock", "reboot"],
            &["image", "ubuntu"],
            &["test", "--fast"],
            &["dist", "--install"],
            &["__measure", "/tmp/out"],
            &["__measure", "/tmp/out", "bash"],
        ] {
            assert!(Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied())).is_err(), "{args:?}");
        }
    }

    #[test]
    fn options_reach_the_tasks() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied())).unwrap();
        match parse(&["initramfs", "--flavor", "cloud", "--firmware-dir", "/fw"]).task {
            Task::Initramfs(o) => {
                assert_eq!((o.flavour.as_str(), o.firmware_dir), ("cloud", Some(PathBuf::from("/fw"))))
            }
            other => panic!("{other:?}"),
        }
        match parse(&["initramfs", "--ca-file", "ca.pem"]).task {
            Task::Initramfs(o) => assert_eq!(o.ca_file, Some(PathBuf::from("ca.pem"))),
            other => panic!("{other:?}"),
        }
        match parse(&["initramfs"]).task {
            Task::Initramfs(o) => assert_eq!(o, task_initramfs::Options::default()),
            other => panic!("{other:?}"),
        }
        match parse(&["demo", "--image", "debian"]).task {
            Task::Demo(o) => assert_eq!((o.bios, o.image), (false, task_demo::DemoImage::Debian)),
            other => panic!("{other:?}"),
        }
        match parse(&["qmp", "/q.sock", "off"]).task {
            Task::Qmp(o) => assert_eq!((o.socket, o.action), (PathBuf::from("/q.sock"), task_demo::PowerAction::Off)),
            other => panic!("{other:?}"),
        }
        match parse(&["image"]).task {
            Task::Image(o) => assert_eq!(o.image, task_image::Image::Tiny),
            other => panic!("{other:?}"),
        }
        match parse(&["test"]).task {
            Task::Test(o) => assert!(!o.slow),
            other => panic!("{other:?}"),
        }
        match parse(&["__measure", "/o", "--", "bash", "-c", "x --y"]).task {
            Task::Measure(o) => {
                assert_eq!((o.out, o.cmd), (PathBuf::from("/o"), vec!["bash".into(), "-c".into(), "x --y".into()]))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn measure_is_hidden_from_help() {
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("initramfs") && help.contains("bench"), "{help}");
        assert!(!help.contains("__measure"), "{help}");
    }
}
