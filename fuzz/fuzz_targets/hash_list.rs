#![no_main]

use common::fuzzing::check_hash_list;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_hash_list(data));
