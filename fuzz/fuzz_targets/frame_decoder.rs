//! Fuzz target: the frame decoder, fed the stream in reads of arbitrary sizes (see `checks.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check_frame_decoder(data));
