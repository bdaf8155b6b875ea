//! The async frame reader over a byte stream delivered in arbitrary pieces.
#![no_main]

use common::fuzzing::check_stream;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_stream(data));
