//! `byoi-agent`: PID 1 of the netbooted initramfs, or the command line.
//! Parses arguments and hands over to the library; prints progress and the
//! result.

mod cli;

fn main() {
    // As `/init` in the initramfs the agent is PID 1 and never exits.
    if std::process::id() == 1 {
        byoi_agent::netboot::pid1::main();
    }
    std::process::exit(cli::main());
}
