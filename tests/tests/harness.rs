//! The harness itself: a [`TestVm`] that is dropped, or whose test fails,
//! leaves no QEMU behind. (It used to: dropping it SIGKILLed `timeout`, and
//! QEMU, its child, ran on until its limit.)
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use byoi_e2e::{e2e_enabled, TestVm};

/// A VM that does nothing (`-S`: its CPUs never start) and QEMU's pid.
fn idle_vm() -> (TestVm, u32) {
    let vm = TestVm::start(&["-S".into()], Duration::from_secs(120));
    let qemu = qemu_of(&vm);
    (vm, qemu)
}

/// QEMU's pid: the child of the VM's `timeout`, once it runs QEMU.
fn qemu_of(vm: &TestVm) -> u32 {
    let start = Instant::now();
    loop {
        if let [pid] = byoi_testbed::children(vm.pid()).unwrap()[..] {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"qemu-system-x86_64\0") {
                return pid;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(10), "timeout did not start QEMU");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Neither running nor a zombie: `/proc/PID` is gone once a process is
/// reaped.
fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn dropping_a_vm_ends_qemu() {
    if !e2e_enabled("harness-drop") {
        return;
    }
    let (vm, qemu) = idle_vm();
    let timeout = vm.pid();
    drop(vm);
    let stat = std::fs::read_to_string(format!("/proc/{qemu}/stat")).unwrap_or_default();
    assert!(gone(qemu), "QEMU (pid {qemu}) outlived its TestVm: {stat}");
    assert!(gone(timeout), "timeout (pid {timeout}) was not reaped");
}

#[test]
fn a_failing_test_ends_its_qemu() {
    if !e2e_enabled("harness-panic") {
        return;
    }
    let mut pids = None;
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (mut vm, qemu) = idle_vm();
        pids = Some((vm.pid(), qemu));
        vm.wait_for("a line that never comes", Duration::from_secs(1));
    }));
    assert!(failed.is_err(), "wait_for should have panicked");
    let (timeout, qemu) = pids.unwrap();
    assert!(gone(qemu), "QEMU (pid {qemu}) outlived its failed test");
    assert!(gone(timeout), "timeout (pid {timeout}) was not reaped");
}
