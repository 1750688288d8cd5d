//! Fuzz target: a qcow2 image: header, then the decoder forward-only and with Range requests
//! (`byoi_agent::fuzzing::qcow2`, which panics only when an invariant breaks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| byoi_agent::fuzzing::qcow2(data));
