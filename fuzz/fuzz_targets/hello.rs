#![no_main]

use common::fuzzing::check_hello;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_hello(data));
