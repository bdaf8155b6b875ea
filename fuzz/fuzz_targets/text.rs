//! Names, search words, sizes and durations as they arrive from users and peers.
#![no_main]

use common::fuzzing::check_text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_text(data));
