#![no_main]

use common::fuzzing::check_handshake_payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_handshake_payload(data));
