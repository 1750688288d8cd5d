//! Fuzz target: an OVA: tar walk, OVF descriptor, manifest, each disk decoded
//! (`byoi_agent::fuzzing::ova`, which panics only when an invariant breaks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| byoi_agent::fuzzing::ova(data));
