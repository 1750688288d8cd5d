//! `byoi`: the controller (`byoi serve`) and its command-line client.

mod cli;
mod output;
mod profile;

fn main() {
    std::process::exit(cli::main());
}
