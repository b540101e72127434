#![no_main]
// Bytes from an unauthenticated peer: CONNECT first, then packets of either version.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat_mqtt::fuzz::decode_stream(data));
