//! Inputs that once made a fuzz target panic (`cargo xtask fuzz` keeps
//! them in `tests/fuzz-regressions/<target>/`), replayed through the same
//! entry points (`byoi_agent::fuzzing`) so each stays fixed.
#![allow(clippy::unwrap_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use byoi_agent::fuzzing;

/// A fuzz target's entry point.
type Entry = fn(&[u8]);

/// The fuzz targets: each a subdirectory and its entry point.
const TARGETS: &[(&str, Entry)] = &[("qcow2", fuzzing::qcow2), ("vmdk", fuzzing::vmdk), ("ova", fuzzing::ova)];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions")
}

/// The kept inputs of `target`, sorted; none when git left out its empty directory.
fn inputs(target: &str) -> Vec<PathBuf> {
    let d = dir().join(target);
    if !d.exists() {
        return Vec::new();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in &files {
        assert!(f.is_file(), "{}: only input files belong in a target's directory", f.display());
    }
    files
}

#[test]
fn the_directory_holds_only_inputs_of_known_targets() {
    let d = dir();
    assert!(d.is_dir(), "{} is missing", d.display());
    assert!(d.join("README.md").is_file(), "{} lost its README.md", d.display());
    for e in std::fs::read_dir(&d).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "README.md" {
            continue;
        }
        assert!(
            e.path().is_dir() && TARGETS.iter().any(|(t, _)| *t == name),
            "{}: not a fuzz target's directory (there are {}); inputs go in the one of their target",
            e.path().display(),
            TARGETS.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
        );
    }
    for (t, _) in TARGETS {
        inputs(t);
    }
}

#[test]
fn every_kept_input_replays_without_a_panic() {
    let mut failed = Vec::new();
    let mut replayed = 0;
    for (target, entry) in TARGETS {
        for f in inputs(target) {
            let data = std::fs::read(&f).unwrap();
            let name = format!("{target}/{}", f.file_name().unwrap().to_string_lossy());
            eprintln!("replaying {name} ({} bytes)", data.len());
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| entry(&data))) {
                let msg = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic without a message");
                failed.push(format!("{name}: {msg}"));
            }
            replayed += 1;
        }
    }
    eprintln!("{replayed} kept input(s) replayed");
    assert!(failed.is_empty(), "fuzz regressions panic again:\n  {}", failed.join("\n  "));
}
