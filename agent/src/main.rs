//! `byoi-agent`: PID 1 of the netbooted initramfs, or the command line.
//! Parses arguments and hands over to the library; prints progress and the
//! result.

mod cli;

/// musl's own allocator hands every allocation over 128 KiB straight to
/// `mmap` and back to `munmap` on free, so each of hyper's read buffers is
/// fresh, faulted-in memory: measured with `cargo xtask bench`, a 4 GiB raw
/// deploy took 15 s with it and 6 s with glibc's. mimalloc reuses them.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // As `/init` in the initramfs the agent is PID 1 and never exits.
    if std::process::id() == 1 {
        byoi_agent::netboot::pid1::main();
    }
    std::process::exit(cli::main());
}
