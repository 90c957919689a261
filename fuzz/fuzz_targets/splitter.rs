//! Fuzz target: the word splitter against the spec's rules written plainly (see `checks.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check_splitter(data));
