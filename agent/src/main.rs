//! `byoi-agent`: the command line. Parses arguments and hands over to the
//! library; prints progress and the result.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
