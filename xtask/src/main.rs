//! `cargo xtask`: build and test automation (matklad's cargo-xtask pattern).

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        _ => anyhow::bail!("usage: cargo xtask <task>"),
    }
}
