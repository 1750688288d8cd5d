//! Fuzz target: a VMDK: text descriptor, sparse header and extent
//! (`byoi_agent::fuzzing::vmdk`, which panics only when an invariant breaks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| byoi_agent::fuzzing::vmdk(data));
