//! Arbitrary frames into every decoder: nothing panics, and whatever decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomlab_protocol::fuzzing::{check_decode, DecodeInput};

fuzz_target!(|input: DecodeInput| check_decode(&input));
