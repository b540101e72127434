#![no_main]
// Whatever decodes must encode in `encoded_len` bytes and decode back unchanged.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat_mqtt::fuzz::roundtrip(data));
