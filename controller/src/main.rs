//! `byoi`: the controller (`byoi serve`) and its command-line client.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
