//! Every message type of the index and peer protocols, decoded from
//! arbitrary frames; whatever decodes must re-encode to a frame that
//! decodes to the same message.
#![no_main]

use common::fuzzing::check_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_frame(data));
