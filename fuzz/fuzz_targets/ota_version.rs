#![no_main]
// Image versions (from operators, signed metadata and device reports) and their order.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat_ota::fuzz::version(data));
