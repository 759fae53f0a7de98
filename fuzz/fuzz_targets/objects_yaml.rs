//! Fuzz target `objects_yaml`: the invariants live in `src/checks.rs` (shared with the stable
//! corpus replay test), so this file only feeds them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| secrets_store_fuzz::check_objects_yaml(data));
