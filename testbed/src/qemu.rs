//! QEMU command lines: [`Qemu`] (TCG, the serial console on stdout, run
//! under `timeout`) and [`Machine`] (a server that netboots from the
//! controller: its firmware, disk and NIC).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::timed;

/// The emulator (bookworm-backports' `qemu-system-x86`, installed by
/// `cargo xtask test`/`demo`).
pub const QEMU: &str = "qemu-system-x86_64";

/// Where Debian's `ovmf` package puts the firmware.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The OVMF variables template; each [`Machine`] gets a writable copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// A QEMU command line, built up from [`Qemu::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qemu {
    args: Vec<String>,
}

impl Qemu {
    /// `qemu-system-x86_64 -accel tcg -m MEMORY -nographic -monitor none`:
    /// TCG, because KVM does not work on our (nested) machines; the serial
    /// console is QEMU's stdout, with no monitor multiplexed into it.
    /// `-nographic` rather than `-display none`: with it QEMU tells SeaBIOS
    /// to copy text-mode output to the serial port (`etc/sercon-port`), so
    /// SeaBIOS's and BIOS iPXE's messages reach the console too.
    pub fn new(memory_mib: u32) -> Qemu {
        Qemu { args: Vec::new() }.args([
            "-accel",
            "tcg",
            "-m",
            &memory_mib.to_string(),
            "-nographic",
            "-monitor",
            "none",
        ])
    }

    /// `-no-reboot`: a guest reboot ends QEMU (by default the firmware
    /// starts again, as on a real server; a power-off always ends QEMU).
    pub fn no_reboot(self) -> Qemu {
        self.args(["-no-reboot"])
    }

    /// `-S`: the CPUs stay stopped until QMP `cont`, like a powered-off
    /// server.
    pub fn paused(self) -> Qemu {
        self.args(["-S"])
    }

    /// `-qmp unix:SOCKET,server=on,wait=off`: QMP on a Unix socket (the
    /// demo's power driver).
    pub fn qmp(self, socket: &Path) -> Qemu {
        self.args(["-qmp".to_owned(), format!("unix:{},server=on,wait=off", socket.display())])
    }

    /// More arguments, e.g. [`Machine::args`].
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Qemu {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The arguments after the program name.
    pub fn as_args(&self) -> &[String] {
        &self.args
    }

    /// [`QEMU`] with these arguments under `timeout` ([`timed`]), stdin
    /// from `/dev/null`: set stdout and stderr, then spawn it with
    /// [`crate::TimedChild::spawn`].
    pub fn command(&self, limit: Duration) -> Command {
        let mut c = timed(limit, QEMU);
        c.args(&self.args).stdin(Stdio::null());
        c
    }
}

/// The firmware of a [`Machine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, booting the NIC first (`-boot n`) at every boot.
    Bios,
    /// OVMF, NIC `bootindex=0`, disk `bootindex=1`.
    Uefi,
}

/// A server that netboots from the controller (the guest reaches the
/// host's loopback at 10.0.2.2): its firmware, disk file and MAC.
#[derive(Debug, Clone)]
pub struct Machine {
    pub firmware: Firmware,
    /// Raw disk file.
    pub disk: PathBuf,
    /// `virtio-blk-pci` or `nvme`.
    pub disk_device: &'static str,
    pub mac: String,
    /// The OVMF variables (a copy of [`OVMF_VARS`]), for UEFI.
    pub vars: PathBuf,
}

impl Machine {
    /// A machine with a new empty disk of `disk_mib` MiB, `dir/disk.raw`,
    /// and for UEFI fresh OVMF variables, `dir/vars.fd`.
    pub fn new(
        dir: &Path,
        firmware: Firmware,
        disk_device: &'static str,
        disk_mib: u64,
        mac: &str,
    ) -> std::io::Result<Machine> {
        let disk = dir.join("disk.raw");
        std::fs::File::create(&disk)?.set_len(disk_mib << 20)?;
        let vars = dir.join("vars.fd");
        if firmware == Firmware::Uefi {
            std::fs::copy(OVMF_VARS, &vars).map_err(|e| {
                std::io::Error::new(e.kind(), format!("copying {OVMF_VARS} (package ovmf) to {}: {e}", vars.display()))
            })?;
        }
        Ok(Machine { firmware, disk, disk_device, mac: mac.to_owned(), vars })
    }

    /// QEMU arguments: firmware, disk, and a NIC whose DHCP bootfile is
    /// `boot.ipxe` of the controller at `controller` (`HOST:PORT` on the
    /// host's loopback; only the port is used).
    pub fn args(&self, controller: &str) -> Vec<String> {
        let port = controller.rsplit(':').next().unwrap_or_default();
        let mut a: Vec<String> = Vec::new();
        let (disk_index, nic_index) = match self.firmware {
            Firmware::Bios => {
                a.extend(["-boot".into(), "n".into()]);
                ("", "")
            }
            Firmware::Uefi => {
                a.push("-drive".into());
                a.push(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
                a.push("-drive".into());
                a.push(format!("if=pflash,format=raw,file={}", self.vars.display()));
                (",bootindex=1", ",bootindex=0")
            }
        };
        a.push("-drive".into());
        a.push(format!("file={},if=none,id=d0,format=raw", self.disk.display()));
        a.push("-device".into());
        // NVMe needs a serial; the agent names disks by it.
        let serial = if self.disk_device == "nvme" { ",serial=byoi0001" } else { "" };
        a.push(format!("{},drive=d0{serial}{disk_index}", self.disk_device));
        a.push("-netdev".into());
        a.push(format!("user,id=n0,bootfile=http://10.0.2.2:{port}/boot.ipxe"));
        a.push("-device".into());
        a.push(format!("virtio-net-pci,netdev=n0,mac={}{nic_index}", self.mac));
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(firmware: Firmware, disk_device: &'static str) -> Machine {
        Machine {
            firmware,
            disk: "/d/disk.raw".into(),
            disk_device,
            mac: "52:54:00:00:00:01".into(),
            vars: "/d/vars.fd".into(),
        }
    }

    /// The netboot lines of REFERENCE.md, with our MAC and disk serial.
    #[test]
    fn machine_args() {
        let cases = [
            (
                machine(Firmware::Bios, "virtio-blk-pci"),
                "-boot n -drive file=/d/disk.raw,if=none,id=d0,format=raw -device virtio-blk-pci,drive=d0 \
                 -netdev user,id=n0,bootfile=http://10.0.2.2:8080/boot.ipxe \
                 -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01",
            ),
            (
                machine(Firmware::Uefi, "nvme"),
                "-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
                 -drive if=pflash,format=raw,file=/d/vars.fd \
                 -drive file=/d/disk.raw,if=none,id=d0,format=raw -device nvme,drive=d0,serial=byoi0001,bootindex=1 \
                 -netdev user,id=n0,bootfile=http://10.0.2.2:8080/boot.ipxe \
                 -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,bootindex=0",
            ),
        ];
        for (m, want) in cases {
            assert_eq!(m.args("127.0.0.1:8080").join(" "), want, "{m:?}");
        }
    }

    #[test]
    fn qemu_command() {
        let q = Qemu::new(2048).no_reboot().paused().qmp(Path::new("/d/qmp.sock")).args(["-kernel", "vmlinuz"]);
        assert_eq!(
            q.as_args().join(" "),
            "-accel tcg -m 2048 -nographic -monitor none -no-reboot -S \
             -qmp unix:/d/qmp.sock,server=on,wait=off -kernel vmlinuz"
        );
        let c = q.command(Duration::from_secs(300));
        let args: Vec<_> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(c.get_program(), "timeout");
        assert_eq!(args[..4], ["--foreground", "--kill-after=5s", "300s", QEMU]);
        assert_eq!(args[4..], *q.as_args());
    }

    #[test]
    fn machine_files() {
        let dir = tempfile::tempdir().unwrap();
        let m = Machine::new(dir.path(), Firmware::Bios, "virtio-blk-pci", 3, "52:54:00:00:00:02").unwrap();
        assert_eq!(std::fs::metadata(&m.disk).unwrap().len(), 3 << 20);
        assert!(!m.vars.exists(), "no OVMF variables for SeaBIOS");
    }
}
