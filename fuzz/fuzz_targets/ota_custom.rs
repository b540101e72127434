#![no_main]
// custom.moat of image and director targets, as the device's verifier reads them.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat_ota::fuzz::custom(data));
